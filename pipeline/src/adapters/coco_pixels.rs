//! COCO annotations in the stored images' pixels. The shards hold each image resized (a
//! 256 px short side by default), while COCO's boxes, polygons and crowd masks are in the
//! original image's pixels (`images[].width` / `height` of the json). Once the shards exist,
//! every annotation is scaled per axis by stored / original size: boxes and polygons exactly,
//! crowd RLE masks by nearest-neighbour resampling, areas by the product of the two scales.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float64Builder};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ProjectionMask;
use schemas::shard::col;
use serde_json::Value;

use crate::error::{PipelineError, Result};

/// `[width, height]` in pixels.
pub type Size = [u32; 2];

/// `coco_id -> [width, height]` of the images stored in a shard.
pub fn stored_sizes(path: &Path) -> Result<BTreeMap<i64, Size>> {
    let perr = |source| PipelineError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = crate::shard::open_parquet(path)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), [col::COCO_ID, col::WIDTH, col::HEIGHT]);
    let reader = builder.with_projection(mask).build().map_err(perr)?;
    let mut out = BTreeMap::new();
    for batch in reader {
        let batch = batch.map_err(|source| PipelineError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |field: &str| PipelineError::BadField {
            path: path.to_path_buf(),
            field: field.into(),
            message: "missing or of an unexpected type".into(),
        };
        let ids = column::<Int64Array>(&batch, col::COCO_ID).ok_or_else(|| bad(col::COCO_ID))?;
        let w = column::<Int32Array>(&batch, col::WIDTH).ok_or_else(|| bad(col::WIDTH))?;
        let h = column::<Int32Array>(&batch, col::HEIGHT).ok_or_else(|| bad(col::HEIGHT))?;
        for i in (0..batch.num_rows()).filter(|&i| ids.is_valid(i)) {
            if w.value(i) <= 0 || h.value(i) <= 0 {
                return Err(PipelineError::BadField {
                    path: path.to_path_buf(),
                    field: format!("row of coco_id {}: width/height", ids.value(i)),
                    message: format!("{}x{} is not an image size", w.value(i), h.value(i)),
                });
            }
            out.insert(ids.value(i), [w.value(i) as u32, h.value(i) as u32]);
        }
    }
    Ok(out)
}

/// Annotations [`to_stored_pixels`] leaves out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Of images the shards do not hold.
    pub unstored: usize,
    /// Of images stored rotated against the json's frame.
    pub rotated: usize,
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Option<&'a T> {
    batch.column_by_name(name)?.as_any().downcast_ref::<T>()
}

/// The annotation table (as `coco::annotation_table` builds it) in stored pixels, with the
/// stored and original sizes beside each annotation. Left out, and counted: annotations of
/// images that were not stored (skipped as unreadable, each a recorded skip), and of images
/// stored rotated against the json's frame (an EXIF orientation, which `transcode` applies
/// and COCO's coordinates do not), which a per-axis scale would misplace.
pub fn to_stored_pixels(
    table: &RecordBatch,
    original: &BTreeMap<i64, Size>,
    stored: &BTreeMap<i64, Size>,
    path: &Path,
) -> Result<(RecordBatch, Dropped)> {
    let bad = |field: String, message: String| PipelineError::BadField {
        path: path.to_path_buf(),
        field,
        message,
    };
    let ann = column::<Int64Array>(table, "ann_id").expect("built by the adapter");
    let image = column::<Int64Array>(table, "coco_id").expect("built by the adapter");
    let bbox = column::<FixedSizeListArray>(table, "bbox").expect("built by the adapter");
    let area = column::<Float64Array>(table, "area").expect("built by the adapter");
    let seg = column::<StringArray>(table, "segmentation").expect("built by the adapter");
    let (mut keep, mut dropped) = (Vec::new(), Dropped::default());
    let (mut boxes, mut areas, mut segs, mut sizes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..table.num_rows() {
        let Some(&to) = stored.get(&image.value(i)) else {
            dropped.unstored += 1;
            continue;
        };
        let field = |f: &str| format!("annotations[id={}].{f}", ann.value(i));
        let from = *original
            .get(&image.value(i))
            .ok_or_else(|| bad(field("image_id"), "its image has no width/height".into()))?;
        if (to[0] > to[1] && from[0] < from[1]) || (to[0] < to[1] && from[0] > from[1]) {
            dropped.rotated += 1;
            continue;
        }
        let (sx, sy) = (to[0] as f64 / from[0] as f64, to[1] as f64 / from[1] as f64);
        let b = bbox.value(i);
        let b = b.as_any().downcast_ref::<Float64Array>().expect("f64 items");
        boxes.push([b.value(0) * sx, b.value(1) * sy, b.value(2) * sx, b.value(3) * sy]);
        areas.push(area.value(i) * sx * sy);
        let s: Value = serde_json::from_str(seg.value(i)).map_err(|e| bad(field("segmentation"), e.to_string()))?;
        let s = scale_segmentation(&s, from, to).map_err(|m| bad(field("segmentation"), m))?;
        segs.push(s.to_string());
        sizes.push((to, from));
        keep.push(i as u64);
    }
    let take = arrow_array::UInt64Array::from(keep);
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in table.schema().fields().iter().zip(table.columns()) {
        let c: ArrayRef = match f.name().as_str() {
            "bbox" => Arc::new(box_column(&boxes)),
            "area" => Arc::new(Float64Array::from(areas.clone())),
            "segmentation" => Arc::new(StringArray::from_iter_values(&segs)),
            _ => arrow_select::take::take(c, &take, None).map_err(|source| PipelineError::Arrow {
                path: path.to_path_buf(),
                source,
            })?,
        };
        fields.push(f.as_ref().clone());
        columns.push(c);
    }
    // (column, stored (0) or original (1) size, axis)
    let sides = [
        ("width", 0, 0),
        ("height", 0, 1),
        ("original_width", 1, 0),
        ("original_height", 1, 1),
    ];
    for (name, which, axis) in sides {
        fields.push(Field::new(name, DataType::Int32, false));
        let values = sizes.iter().map(|s| [s.0, s.1][which][axis] as i32);
        columns.push(Arc::new(Int32Array::from_iter_values(values)));
    }
    let schema = Schema::new(fields).with_metadata(table.schema().metadata().clone());
    let batch = RecordBatch::try_new(Arc::new(schema), columns).map_err(|source| PipelineError::Arrow {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((batch, dropped))
}

fn box_column(boxes: &[[f64; 4]]) -> FixedSizeListArray {
    let item = Arc::new(Field::new("item", DataType::Float64, false));
    let mut b = FixedSizeListBuilder::new(Float64Builder::new(), 4).with_field(item);
    for x in boxes {
        b.values().append_slice(x);
        b.append(true);
    }
    b.finish()
}

/// Polygons (`[[x, y, x, y, ...], ...]`) scaled per axis; an RLE mask (`{"size": [h, w],
/// "counts": ...}`, compressed or not) resampled to the stored size, written uncompressed.
pub fn scale_segmentation(s: &Value, from: Size, to: Size) -> std::result::Result<Value, String> {
    let (sx, sy) = (to[0] as f64 / from[0] as f64, to[1] as f64 / from[1] as f64);
    match s {
        Value::Null => Ok(Value::Null),
        Value::Array(polys) => polys
            .iter()
            .map(|p| {
                let p = p.as_array().ok_or("a polygon is not a list")?;
                p.iter()
                    .enumerate()
                    .map(|(k, v)| {
                        let v = v.as_f64().ok_or("a polygon coordinate is not a number")?;
                        Ok(Value::from(v * if k % 2 == 0 { sx } else { sy }))
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()
                    .map(Value::Array)
            })
            .collect::<std::result::Result<Vec<_>, String>>()
            .map(Value::Array),
        Value::Object(rle) => {
            let size = rle
                .get("size")
                .and_then(Value::as_array)
                .ok_or("an RLE without its size")?;
            let dim = |k: usize| size.get(k).and_then(Value::as_u64);
            let (h, w) = (dim(0).ok_or("RLE height")?, dim(1).ok_or("RLE width")?);
            if [w, h] != [from[0] as u64, from[1] as u64] || w * h > MAX_MASK_PIXELS {
                return Err(format!(
                    "an RLE mask of {w}x{h} on a {}x{} image (at most {MAX_MASK_PIXELS} pixels)",
                    from[0], from[1]
                ));
            }
            let (h, w) = (h as usize, w as usize);
            let counts = match rle.get("counts") {
                Some(Value::String(text)) => decode_compressed(text)?,
                Some(Value::Array(c)) => c
                    .iter()
                    .map(|v| v.as_u64().ok_or("an RLE count is not a count"))
                    .collect::<std::result::Result<_, _>>()?,
                _ => return Err("RLE counts missing".into()),
            };
            let mask = rle_to_mask(&counts, h, w)?;
            let counts = mask_to_rle(&resample(&mask, [h, w], [to[1] as usize, to[0] as usize]));
            Ok(serde_json::json!({"size": [to[1], to[0]], "counts": counts}))
        }
        _ => Err("neither polygons nor an RLE mask".into()),
    }
}

/// The largest crowd mask decoded: 256 megapixels, far above any COCO image.
const MAX_MASK_PIXELS: u64 = 1 << 28;

/// pycocotools' compressed RLE string (`rleFrString`): 5-bit groups with a continuation bit,
/// counts from the third on stored as differences from the count two before.
fn decode_compressed(text: &str) -> std::result::Result<Vec<u64>, String> {
    let bytes = text.as_bytes();
    let (mut counts, mut p): (Vec<i64>, usize) = (Vec::new(), 0);
    while p < bytes.len() {
        let (mut x, mut k, mut more) = (0i64, 0u32, true);
        while more {
            let c = *bytes.get(p).ok_or("a truncated RLE string")? as i64 - 48;
            // pycocotools' counts are 32-bit: at most seven 5-bit groups.
            if !(0..64).contains(&c) || k >= 7 {
                return Err("not an RLE string".into());
            }
            x |= (c & 0x1f) << (5 * k);
            more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more && c & 0x10 != 0 {
                x |= -1i64 << (5 * k);
            }
        }
        if counts.len() > 2 {
            x = x
                .checked_add(counts[counts.len() - 2])
                .ok_or("an RLE count overflows")?;
        }
        counts.push(x);
    }
    counts
        .into_iter()
        .map(|c| u64::try_from(c).map_err(|_| "a negative RLE count".to_string()))
        .collect()
}

/// Column-major (COCO's order) mask of `h * w` pixels from run lengths, zeros first.
fn rle_to_mask(counts: &[u64], h: usize, w: usize) -> std::result::Result<Vec<bool>, String> {
    let n = h * w;
    let total = counts.iter().try_fold(0u64, |a, &c| a.checked_add(c));
    if total != Some(n as u64) {
        return Err(format!("RLE counts sum to {total:?}, not {h}x{w} = {n}"));
    }
    let mut mask = Vec::with_capacity(n);
    for (k, &c) in counts.iter().enumerate() {
        mask.extend(std::iter::repeat_n(k % 2 == 1, c as usize));
    }
    Ok(mask)
}

/// Nearest-neighbour resampling of a column-major mask from `[h, w]` to `[th, tw]`.
fn resample(mask: &[bool], [h, w]: [usize; 2], [th, tw]: [usize; 2]) -> Vec<bool> {
    let mut out = Vec::with_capacity(th * tw);
    for x in 0..tw {
        let sx = ((x as f64 + 0.5) * w as f64 / tw as f64) as usize;
        for y in 0..th {
            let sy = ((y as f64 + 0.5) * h as f64 / th as f64) as usize;
            out.push(mask[sx.min(w - 1) * h + sy.min(h - 1)]);
        }
    }
    out
}

/// Uncompressed RLE counts of a column-major mask, zeros first.
fn mask_to_rle(mask: &[bool]) -> Vec<u64> {
    let mut counts = Vec::new();
    let (mut current, mut run) = (false, 0u64);
    for &m in mask {
        if m != current {
            counts.push(run);
            current = m;
            run = 0;
        }
        run += 1;
    }
    counts.push(run);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polygons_scale_per_axis_and_rle_round_trips() {
        let p = serde_json::json!([[10.0, 20.0, 30.0, 40.0]]);
        let s = scale_segmentation(&p, [10, 20], [5, 5]).unwrap();
        assert_eq!(s, serde_json::json!([[5.0, 5.0, 15.0, 10.0]]));
        // A 4x4 mask with its left half set, halved to 2x2: the left column stays set.
        let rle = serde_json::json!({"size": [4, 4], "counts": [0, 8, 8]});
        let s = scale_segmentation(&rle, [4, 4], [2, 2]).unwrap();
        assert_eq!(s, serde_json::json!({"size": [2, 2], "counts": [0, 2, 2]}));
        // pycocotools' compressed string for the same 4x4 mask (counts [0, 8, 8]).
        assert_eq!(decode_compressed("088").unwrap(), vec![0, 8, 8]);
        let bad = |v: serde_json::Value| scale_segmentation(&v, [4, 4], [4, 4]).unwrap_err();
        assert!(bad(serde_json::json!({"size": [4, 4], "counts": [3]})).contains("sum to"));
        assert!(bad(serde_json::json!("x")).contains("neither"));
        // Hostile counts: an overflowing sum, a mask of another size than its image, a string
        // longer than 32 bits per count.
        assert!(bad(serde_json::json!({"size": [4, 4], "counts": [u64::MAX, 17]})).contains("sum to"));
        assert!(bad(serde_json::json!({"size": [65536, 65536], "counts": [0]})).contains("65536x65536"));
        assert!(bad(serde_json::json!({"size": [4, 4], "counts": "oooooooooooo@"})).contains("not an RLE"));
    }
}
