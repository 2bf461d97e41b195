//! The real Imagenette and COCO subsets in `../shared/data`, and the real bad JPEGs.

use std::collections::BTreeMap;

use crate::common::*;
use pipeline::inspect;
use pipeline::shard::ShardReader;
use pipeline::transcode::decode_upright;

#[test]
fn imagenette_real_counts_names_and_pyarrow_agrees() {
    let (Some(out), Some(root)) = (imagenette(), shared("data/imagenette")) else {
        return;
    };
    let m = pipeline::prepare::load_manifest(out).unwrap();
    assert_eq!(m.splits["train"].images, 9469);
    assert_eq!(m.splits["val"].images, 3925);
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
    assert_eq!(m.class_names.len(), 10);
    assert_eq!(m.class_names[0], "tench, Tinca tinca");
    assert_eq!(m.class_names[9], "parachute, chute");

    // Expected rows from the folders themselves, independent of the adapter.
    let mut expected = Vec::new();
    for split in ["train", "val"] {
        let mut wnids: Vec<_> = std::fs::read_dir(root.join(split))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        wnids.sort();
        for wnid in &wnids {
            let label = wnids.iter().position(|w| w == wnid).unwrap() as i64;
            for f in std::fs::read_dir(root.join(split).join(wnid)).unwrap() {
                let name = f.unwrap().file_name().into_string().unwrap();
                expected.push((
                    format!("{split}/{}/{name}", wnid.to_str().unwrap()),
                    split.to_string(),
                    label,
                ));
            }
        }
    }
    expected.sort();
    let py = pyarrow_rows(out);
    let mut got: Vec<_> = py.iter().map(|(id, s, l, _, _)| (id.clone(), s.clone(), *l)).collect();
    got.sort();
    assert_eq!(got, expected);
    // Imagenette images are 224 px, below the 256 bound: all keep their size.
    assert!(py.iter().all(|r| r.3 == 224 && r.4 == 224 || r.3.min(r.4) <= 256));

    // Our reader sees the same rows, and the grayscale sources became RGB.
    let ours = rows(out, &m);
    assert_eq!(ours.len(), py.len());
    let gray_src = ours.iter().take(400).filter(|r| {
        let raw = std::fs::read(root.join(&r.path)).unwrap();
        image::load_from_memory(&raw).unwrap().color() == image::ColorType::L8
    });
    for r in gray_src {
        assert_eq!(
            image::load_from_memory(&r.image).unwrap().color(),
            image::ColorType::Rgb8,
            "{}",
            r.id
        );
    }

    let (m2, report) = inspect::verify(out).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.rows["train"], 9469);
    let hist = &report.histogram["val"];
    for (label, n) in hist {
        assert_eq!(m2.splits["val"].per_class[&label.to_string()], *n);
    }
    let sheet = inspect::contact_sheet(out, &m2, &out.join("sheet.png"), 4, 10).unwrap();
    let png = image::open(sheet).unwrap();
    assert_eq!((png.width(), png.height()), (4 * 98, 10 * 98));
}

#[test]
fn coco_tiny_real_images_and_annotations() {
    let Some(root) = shared("data/coco_tiny") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("coco");
    let m = run(&config("coco", &root, &out));
    assert_eq!(m.splits["train"].images, 80);
    assert_eq!(m.splits["val"].images, 80);
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);

    for (split, expected_anns) in [("train", 705), ("val", 815)] {
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join(format!("annotations/instances_{split}2017.json"))).unwrap(),
        )
        .unwrap();
        let anns = json["annotations"].as_array().unwrap();
        assert_eq!(anns.len(), expected_anns);
        let side = m.side_tables.iter().find(|t| t.split == split).unwrap();
        assert_eq!(side.rows, expected_anns as u64);
        // Per-image annotation counts in the side table equal the json's.
        let file = std::fs::File::open(out.join(&side.file)).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut per_image: BTreeMap<i64, usize> = BTreeMap::new();
        let mut crowd = 0;
        for b in reader {
            let b = b.unwrap();
            let ids = b
                .column_by_name("coco_id")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            for v in ids.values() {
                *per_image.entry(*v).or_default() += 1;
            }
            let c = b
                .column_by_name("iscrowd")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::BooleanArray>()
                .unwrap();
            crowd += c.true_count();
        }
        let mut expected: BTreeMap<i64, usize> = BTreeMap::new();
        for a in anns {
            *expected.entry(a["image_id"].as_i64().unwrap()).or_default() += 1;
        }
        assert_eq!(per_image, expected);
        assert_eq!(crowd, anns.iter().filter(|a| a["iscrowd"] == 1).count());
    }
    coco_annotations_are_in_stored_pixels(&root, &out, &m);
    let ids: Vec<i64> = rows(&out, &m).iter().map(|r| r.coco_id.unwrap()).collect();
    assert_eq!(ids.len(), 160);
    assert!(rows(&out, &m)
        .iter()
        .all(|r| r.label == -1 && r.width.min(r.height) <= 256));
}

/// Every stored box is the json's box times its image's scale (stored / original size, per
/// axis), polygons likewise; `coco-json` writes them back out with the stored images, and the
/// json reads back with the same boxes and images of the stated sizes.
fn coco_annotations_are_in_stored_pixels(root: &std::path::Path, out: &std::path::Path, m: &schemas::Manifest) {
    use arrow_array::{Array, FixedSizeListArray, Float64Array, Int32Array, Int64Array, StringArray};
    let stored: BTreeMap<i64, (i32, i32)> = rows(out, m)
        .iter()
        .map(|r| (r.coco_id.unwrap(), (r.width, r.height)))
        .collect();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("annotations/instances_val2017.json")).unwrap()).unwrap();
    let original: BTreeMap<i64, (f64, f64)> = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_i64().unwrap(),
                (i["width"].as_f64().unwrap(), i["height"].as_f64().unwrap()),
            )
        })
        .collect();
    let by_id: BTreeMap<i64, &serde_json::Value> = json["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_i64().unwrap(), a))
        .collect();
    let side = m.side_tables.iter().find(|t| t.split == "val").unwrap();
    let file = std::fs::File::open(out.join(&side.file)).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let (mut checked, mut scaled_down, mut ours) = (0, 0, BTreeMap::new());
    for b in reader {
        let b = b.unwrap();
        let get = |n: &str| b.column_by_name(n).unwrap().clone();
        let (ann, img) = (get("ann_id"), get("coco_id"));
        let ann = ann.as_any().downcast_ref::<Int64Array>().unwrap();
        let img = img.as_any().downcast_ref::<Int64Array>().unwrap();
        let (w, h, bbox, seg) = (get("width"), get("height"), get("bbox"), get("segmentation"));
        let w = w.as_any().downcast_ref::<Int32Array>().unwrap();
        let h = h.as_any().downcast_ref::<Int32Array>().unwrap();
        let bbox = bbox.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        let seg = seg.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            let id = img.value(i);
            assert_eq!(
                (w.value(i), h.value(i)),
                stored[&id],
                "the stored image's size beside it"
            );
            let (ow, oh) = original[&id];
            let (sx, sy) = (stored[&id].0 as f64 / ow, stored[&id].1 as f64 / oh);
            let want: Vec<f64> = by_id[&ann.value(i)]["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = bbox.value(i);
            let got = got.as_any().downcast_ref::<Float64Array>().unwrap().values().to_vec();
            let expect = [want[0] * sx, want[1] * sy, want[2] * sx, want[3] * sy];
            for k in 0..4 {
                assert!(
                    (got[k] - expect[k]).abs() < 1e-9,
                    "annotation {}: {got:?} vs {expect:?}",
                    ann.value(i)
                );
            }
            let poly = &by_id[&ann.value(i)]["segmentation"];
            let s: serde_json::Value = serde_json::from_str(seg.value(i)).unwrap();
            if let (Some(p), Some(q)) = (poly[0].as_array(), s[0].as_array()) {
                let (x, y) = (p[1].as_f64().unwrap() * sy, q[1].as_f64().unwrap());
                assert!((x - y).abs() < 1e-9, "polygon y scaled: {x} vs {y}");
            } else {
                assert_eq!(
                    s["size"],
                    serde_json::json!([stored[&id].1, stored[&id].0]),
                    "crowd RLE resized"
                );
            }
            scaled_down += usize::from(sx < 0.9);
            checked += 1;
            ours.insert(ann.value(i), got);
        }
    }
    assert_eq!(checked, 815);
    assert!(
        scaled_down > 700,
        "COCO's 640 px images are stored at a 256 px short side: {scaled_down}"
    );

    let det = tempfile::tempdir().unwrap();
    let e = pipeline::coco_json::write_coco(out, "val", det.path(), true).unwrap();
    assert_eq!((e.images, e.annotations, e.categories), (80, 815, 80));
    let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&e.json).unwrap()).unwrap();
    for a in back["annotations"].as_array().unwrap() {
        let b: Vec<f64> = a["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(b, ours[&a["id"].as_i64().unwrap()]);
    }
    for i in back["images"].as_array().unwrap() {
        let id = i["id"].as_i64().unwrap();
        assert_eq!(
            (
                i["width"].as_i64().unwrap() as i32,
                i["height"].as_i64().unwrap() as i32
            ),
            stored[&id]
        );
        let path = det.path().join("val").join(i["file_name"].as_str().unwrap());
        let (w, h) = image::image_dimensions(&path).unwrap();
        assert_eq!((w as i32, h as i32), stored[&id], "{}", path.display());
    }
}

/// CamVid through the generic segmentation layout: every listed frame a row with its label map
/// in the `mask` column, aligned with the stored image and equal to the published PNG (the
/// frames are kept at their 480x360), the 11 classes in the manifest. A list line that leaves
/// the root is an error naming the file and line.
#[test]
fn camvid_frames_and_label_maps() {
    let Some(root) = shared("data/camvid") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("camvid");
    let mut cfg = config("segmentation", &root, &out);
    cfg.transcode.max_short_side = Some(360);
    let m = run(&cfg);
    assert_eq!((m.splits["train"].images, m.splits["val"].images), (367, 101));
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
    assert_eq!(m.mask_classes.len(), 11);
    assert_eq!(m.mask_classes[0], "Sky");
    let rows = rows(&out, &m);
    let mut seen = [0u64; 256];
    for r in &rows {
        assert_eq!(r.label, -1);
        let mask = image::load_from_memory(r.mask.as_ref().expect("a label map"))
            .unwrap()
            .to_luma8();
        assert_eq!(mask.dimensions(), (r.width as u32, r.height as u32), "{}", r.id);
        for p in mask.pixels() {
            seen[p.0[0] as usize] += 1;
        }
    }
    assert!(
        seen[..12].iter().all(|&n| n > 0) && seen[12..].iter().all(|&n| n == 0),
        "{:?}",
        &seen[..13]
    );
    let first = rows.iter().find(|r| r.id == "train/0001TP_006690.jpg").unwrap();
    let stored = image::load_from_memory(first.mask.as_ref().unwrap())
        .unwrap()
        .to_luma8();
    let published = image::open(root.join("trainannot/0001TP_006690.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(stored, published);

    let hostile = tmp.path().join("hostile");
    std::fs::create_dir_all(&hostile).unwrap();
    std::fs::write(hostile.join("classes.txt"), "a\nb\n").unwrap();
    std::fs::write(hostile.join("train.txt"), "x.jpg x.png\n../etc/passwd y.png\n").unwrap();
    let err = pipeline::adapters::list("segmentation", &hostile, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("train.txt:2") && err.contains("inside the dataset folder"),
        "{err}"
    );
}

#[test]
fn jpeg_edge_cases_orientation_and_corruption() {
    let Some(edge) = shared("fixtures/jpeg_edge_cases") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("edge");
    for f in std::fs::read_dir(edge.join("orientation")).unwrap() {
        let f = f.unwrap();
        let class = if f.file_name().to_str().unwrap().starts_with("landscape") {
            "landscape"
        } else {
            "portrait"
        };
        write_file(&root.join(class).join(f.file_name()), &std::fs::read(f.path()).unwrap());
    }
    write_file(
        &root.join("broken/corrupted.jpg"),
        &std::fs::read(edge.join("corrupted.jpg")).unwrap(),
    );
    for f in std::fs::read_dir(edge.join("invalid")).unwrap() {
        let f = f.unwrap();
        write_file(
            &root.join("broken").join(f.file_name()),
            &std::fs::read(f.path()).unwrap(),
        );
    }
    write_file(&root.join("broken/notes.txt"), b"not an image at all");
    write_file(
        &root.join("broken/truncated.jpg"),
        &std::fs::read(edge.join("orientation/landscape_1.jpg")).unwrap()[..20_000],
    );

    let out = tmp.path().join("out");
    let m = run(&config("folder", &root, &out));
    let skipped: BTreeMap<&str, &str> = m.skipped.iter().map(|s| (s.path.as_str(), s.reason.as_str())).collect();
    assert!(
        skipped["broken/corrupted.jpg"].contains("corrupt JPEG data"),
        "{skipped:?}"
    );
    assert!(skipped["broken/notes.txt"].contains("not an image"), "{skipped:?}");
    assert!(skipped["broken/truncated.jpg"].contains("JPEG"), "{skipped:?}");
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    // The files under invalid/ are structurally valid baseline JPEGs (jpeginfo -c: OK,
    // libjpeg-turbo decodes them); they are kept, at their true size.
    let rows = rows(&out, &m);
    let size = |name: &str| {
        rows.iter()
            .find(|r| r.id == format!("broken/{name}"))
            .map(|r| (r.width, r.height))
    };
    assert_eq!(size("image01980.jpg"), Some((284, 25)));
    assert_eq!(size("image01713.jpg"), Some((49, 500)));
    assert_eq!(rows.len() + skipped.len(), 16 + 7 + 3, "every input is a row or a skip");

    // Every EXIF orientation comes out upright: same size and pixels as orientation 1.
    for kind in ["landscape", "portrait"] {
        let reference = rows.iter().find(|r| r.id == format!("{kind}/{kind}_1.jpg")).unwrap();
        let ref_img = decode_upright(&reference.image).unwrap().0;
        assert_eq!(reference.width > reference.height, kind == "landscape");
        for o in 2..=8 {
            let r = rows.iter().find(|r| r.id == format!("{kind}/{kind}_{o}.jpg")).unwrap();
            assert_eq!((r.width, r.height), (reference.width, reference.height), "{}", r.id);
            let img = decode_upright(&r.image).unwrap().0;
            // The photos differ slightly per file (re-encodes), so compare against the other
            // same-size transforms: the upright one must be clearly the closest.
            let d = image_distance(&img, &ref_img);
            let wrong = [
                image::imageops::flip_horizontal(&img),
                image::imageops::flip_vertical(&img),
                image::imageops::rotate180(&img),
            ]
            .iter()
            .map(|w| image_distance(w, &ref_img))
            .fold(f64::INFINITY, f64::min);
            assert!(
                d < 0.6 * wrong,
                "{}: upright distance {d}, best wrong transform {wrong}",
                r.id
            );
        }
    }
    let labels: Vec<i32> = ShardReader::open(&out.join(&m.shards[0].file))
        .unwrap()
        .map(|r| r.unwrap().label)
        .collect();
    assert!(labels.iter().all(|&l| (0..3).contains(&l)));
}

/// HF `datasets`, polars and duckdb read the prepared real Imagenette as declared: `image` an
/// `Image` that decodes to what our reader decodes, `label` a `ClassLabel` with the manifest's
/// names, and the same rows per split and label as the manifest (`tests/python/clients.py`).
#[test]
fn real_clients_read_shards_as_declared() {
    let Some(out) = imagenette() else { return };
    let m = pipeline::prepare::load_manifest(out).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let shard = m.shards.iter().find(|s| s.split == "val").unwrap();
    let row = ShardReader::open(&out.join(&shard.file))
        .unwrap()
        .nth(7)
        .unwrap()
        .unwrap();
    let (rgb, _) = decode_upright(&row.image).unwrap();
    let rgb_path = tmp.path().join("ours.rgb");
    std::fs::write(&rgb_path, rgb.as_raw()).unwrap();
    let ours = tmp.path().join("ours.json");
    let spec = serde_json::json!({
        "id": row.id, "split": row.split, "width": rgb.width(), "height": rgb.height(), "rgb": rgb_path,
    });
    std::fs::write(&ours, spec.to_string()).unwrap();
    let output = python()
        .arg(workspace().join("tests/python/clients.py"))
        .arg(out)
        .arg(&ours)
        // `datasets` caches its Arrow copy here, and never reaches for the network.
        .env("HF_HOME", tmp.path().join("hf"))
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .current_dir(tmp.path())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "a client disagrees (`make python-deps` installs them): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("clients: {report}");
    for split in ["train", "val"] {
        let n = m.splits[split].images;
        assert_eq!(report["datasets"][split]["rows"], n, "{split}");
        assert_eq!(report["datasets"][split]["label"], "ClassLabel");
        assert_eq!(report["datasets"][split]["classes"], 10);
        assert_eq!(report["polars"][split]["rows"], n);
        assert_eq!(report["duckdb"][split]["labels"], 10);
    }
    assert_eq!(report["datasets"]["image_check"]["id"], row.id.as_str());
}

/// Kept JPEG bytes are validated by the Huffman walk (`jpeg_entropy`) or, where it is unsure, a
/// strict decode to luma only: together they must accept exactly what the full strict RGB
/// decode accepts, on real photos, the edge cases, truncated and damaged copies, or they would
/// keep damaged bytes or lose good ones. Whatever the walk calls clean must decode.
#[test]
fn the_kept_jpeg_check_accepts_exactly_what_decodes() {
    use pipeline::transcode::{transcode, TranscodeSettings};
    let (Some(photos), Some(edge)) = (shared("data/imagenette"), shared("fixtures/jpeg_edge_cases")) else {
        return;
    };
    let keep_all = TranscodeSettings {
        max_short_side: None,
        ..Default::default()
    };
    let mut files: Vec<_> = walkdir::WalkDir::new(&photos)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("jpeg") || x.eq_ignore_ascii_case("jpg"))
        })
        .map(|e| e.into_path())
        .step_by(40)
        .take(120)
        .collect();
    let photo_count = files.len();
    files.extend(
        walkdir::WalkDir::new(&edge)
            .sort_by_file_name()
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path()),
    );
    use pipeline::jpeg_entropy::{walk, Walk};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let (mut kept, mut rejected, mut walked, mut photos_walked, mut colour_photos) = (0, 0, 0, 0, 0);
    for (i, f) in files.iter().enumerate() {
        let raw = std::fs::read(f).unwrap();
        // The whole file, copies cut inside the entropy data (the header is a few hundred
        // bytes), and copies with a few bytes of it overwritten.
        let mut inputs = vec![raw.clone()];
        for cut in [raw.len() * 3 / 4, raw.len() / 2, raw.len() - 3] {
            inputs.push(raw[..cut].to_vec());
        }
        for _ in 0..3 {
            let mut bad = raw.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(raw.len() / 4..raw.len() - 2);
                bad[at] = rng.random();
            }
            inputs.push(bad);
        }
        for (n, bytes) in inputs.iter().enumerate() {
            let cut = bytes.len();
            let full = decode_upright(bytes);
            let whole_photo = n == 0 && i < photo_count;
            colour_photos += usize::from(whole_photo && full.as_ref().is_ok_and(|(_, rgb)| *rgb));
            if walk(bytes) == Walk::Clean {
                walked += 1;
                photos_walked += usize::from(whole_photo);
                assert!(
                    full.is_ok(),
                    "{} (input {n}): walked clean, yet it does not decode",
                    f.display()
                );
            }
            let Ok(t) = transcode(bytes, None, &keep_all) else {
                rejected += 1;
                assert!(full.is_err(), "{} cut at {cut}: rejected, yet it decodes", f.display());
                continue;
            };
            let (img, upright_rgb) = full.unwrap_or_else(|e| panic!("{} cut at {cut}: kept, yet {e}", f.display()));
            assert_eq!((t.width, t.height), img.dimensions(), "{}", f.display());
            assert_eq!(!t.reencoded, upright_rgb, "{}", f.display());
            kept += usize::from(!t.reencoded);
        }
    }
    assert!(
        kept >= 100 && rejected >= 100,
        "kept {kept}, rejected {rejected}: the check saw too few of one kind"
    );
    // The fast walk must be what proves ordinary photos (the decoder is only the fallback).
    assert!(
        photos_walked >= colour_photos && walked > photos_walked,
        "walked {photos_walked} of {colour_photos} colour photos, {walked} inputs in all"
    );
    let corrupted = std::fs::read(edge.join("corrupted.jpg")).unwrap();
    let err = transcode(&corrupted, None, &keep_all).unwrap_err();
    assert!(err.0.contains("corrupt JPEG data"), "{err}");
}

/// Our own shards, renamed into the Hub's layout (`data/train-00000-of-00001.parquet`,
/// `data/validation-...`), prepare back to the same images and labels with the class names
/// from their `huggingface` metadata; a file that is no split's is a recorded skip.
#[test]
fn hub_layout_parquet_prepares_back_to_the_same_rows() {
    use sha2::{Digest, Sha256};
    let (Some(root), Some(synsets)) = (
        shared("data/imagenette"),
        shared("fixtures/imagenet/LOC_synset_mapping.txt"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let mut cfg = config("imagenet", &root, &first);
    cfg.options = pipeline::adapters::AdapterOptions {
        synsets: Some(synsets),
        ..Default::default()
    };
    cfg.subset = Some(pipeline::prepare::Subset {
        fraction: 0.02,
        seed: 1,
    });
    cfg.shard_bytes = 2_000_000;
    let m = run(&cfg);

    let hub = tmp.path().join("hub");
    std::fs::create_dir_all(hub.join("data")).unwrap();
    for split in ["train", "val"] {
        let files: Vec<_> = m.shards.iter().filter(|s| s.split == split).collect();
        for (k, s) in files.iter().enumerate() {
            let name = if split == "val" { "validation" } else { split };
            let dest = hub.join(format!("data/{name}-{k:05}-of-{:05}.parquet", files.len()));
            std::fs::copy(first.join(&s.file), dest).unwrap();
        }
    }
    std::fs::write(hub.join("README.parquet"), b"not a split").unwrap();
    let back = tmp.path().join("back");
    let mut again = config("parquet", &hub, &back);
    again.transcode.max_short_side = None;
    again.shard_bytes = 2_000_000;
    let m2 = run(&again);
    assert_eq!(m2.class_names, m.class_names);
    assert_eq!(m2.skipped.len(), 1, "{:?}", m2.skipped);
    let digest = |dir: &std::path::Path, m: &schemas::Manifest| {
        let mut v: Vec<(String, String, i32)> = rows(dir, m)
            .into_iter()
            .map(|r| (r.split, format!("{:x}", Sha256::digest(&r.image)), r.label))
            .collect();
        v.sort();
        v
    };
    let (a, b) = (digest(&first, &m), digest(&back, &m2));
    assert!(a.len() > 150, "{}", a.len());
    assert_eq!(a, b, "the same images, labels and splits");
}
