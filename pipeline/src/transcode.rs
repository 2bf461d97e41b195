//! Image decoding and normalisation: EXIF orientation applied, any colour type to RGB, optional
//! crop and resize (shorter side <= S), JPEG re-encoding, or the original bytes kept when they
//! already are an upright RGB JPEG of an allowed size.

use std::io::Cursor;

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

/// Settings that decide the bytes written for each image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeSettings {
    /// Resize so the shorter side is at most this many pixels; `None` keeps the size.
    pub max_short_side: Option<u32>,
    /// JPEG quality (1..=100) for images that are re-encoded.
    pub quality: u8,
    pub filter: ResizeFilter,
    /// Crop to the dataset's bounding box (Stanford Cars) before resizing.
    pub crop_to_bbox: bool,
    /// Largest image decoded, in pixels (width x height, read from the headers before any
    /// pixel is allocated); a larger one is a skip. Absent from manifests older than it.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

/// PIL's decompression-bomb limit (twice its `MAX_IMAGE_PIXELS`): 179 MP, 537 MB of RGB. Shard
/// readers (the vocabulary, tokenizer and trainer) decode within it too.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}

impl Default for TranscodeSettings {
    fn default() -> Self {
        TranscodeSettings {
            max_short_side: Some(256),
            quality: 90,
            filter: ResizeFilter::Bicubic,
            crop_to_bbox: false,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    Bilinear,
    /// Catmull-Rom (PIL's BICUBIC).
    Bicubic,
    Lanczos3,
}

impl ResizeFilter {
    fn alg(self) -> fr::ResizeAlg {
        fr::ResizeAlg::Convolution(match self {
            ResizeFilter::Bilinear => fr::FilterType::Bilinear,
            ResizeFilter::Bicubic => fr::FilterType::CatmullRom,
            ResizeFilter::Lanczos3 => fr::FilterType::Lanczos3,
        })
    }
}

/// An image ready to be stored.
#[derive(Debug, Clone)]
pub struct Transcoded {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// False when the source bytes were kept as they are.
    pub reencoded: bool,
}

/// Why an input did not become a row; goes to the manifest's skipped list verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SkipReason(pub String);

/// The upright RGB pixels of an encoded image, and whether the source already was an upright
/// RGB JPEG (whose bytes may then be kept); within [`DEFAULT_MAX_PIXELS`].
pub fn decode_upright(raw: &[u8]) -> Result<(RgbImage, bool), SkipReason> {
    decode_upright_within(raw, DEFAULT_MAX_PIXELS)
}

/// [`decode_upright`] within a budget of `max_pixels`, checked on the headers' size before
/// the pixels are allocated.
pub fn decode_upright_within(raw: &[u8], max_pixels: u64) -> Result<(RgbImage, bool), SkipReason> {
    let format =
        image::guess_format(raw).map_err(|_| SkipReason("not an image (unrecognised file signature)".into()))?;
    let (mut img, orientation, kept_layout) = if format == ImageFormat::Jpeg {
        decode_jpeg_strict(raw, max_pixels)?
    } else {
        decode_other(raw, format, max_pixels)?
    };
    if img.width() == 0 || img.height() == 0 {
        return Err(SkipReason("image has zero width or height".into()));
    }
    if orientation != Orientation::NoTransforms {
        let mut dynamic = DynamicImage::ImageRgb8(img);
        dynamic.apply_orientation(orientation);
        img = dynamic.into_rgb8();
    }
    Ok((img, kept_layout && orientation == Orientation::NoTransforms))
}

/// JPEGs are decoded in strict mode: a lenient decoder (PIL, image's default) pads corrupt or
/// truncated entropy data with grey and reports success, which would put damaged pixels into a
/// training set. Strict mode makes them a listed skip instead.
fn strict_jpeg_decoder(raw: &[u8], out: zune_core::colorspace::ColorSpace) -> JpegDecoder<'_> {
    let opts = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16)
        .jpeg_set_out_colorspace(out);
    zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(raw), opts)
}

type JpegDecoder<'a> = zune_jpeg::JpegDecoder<zune_core::bytestream::ZCursor<&'a [u8]>>;

/// What a JPEG's headers say: its size, EXIF orientation, and whether it is colour (YCbCr or
/// RGB) data, the layout whose bytes may be kept.
struct JpegHeaders {
    width: u32,
    height: u32,
    orientation: Orientation,
    source_rgb: bool,
}

/// A skip for an image of `width` x `height` over the budget.
fn within_budget(width: u32, height: u32, max_pixels: u64) -> Result<(), SkipReason> {
    let pixels = u64::from(width) * u64::from(height);
    match pixels <= max_pixels {
        true => Ok(()),
        false => Err(SkipReason(format!(
            "{width}x{height} is {pixels} pixels, over the decoding budget of {max_pixels} (--max-pixels)"
        ))),
    }
}

fn jpeg_headers(d: &mut JpegDecoder<'_>, max_pixels: u64) -> Result<JpegHeaders, SkipReason> {
    use zune_core::colorspace::ColorSpace;
    d.decode_headers()
        .map_err(|e| SkipReason(format!("invalid JPEG header: {e:?}")))?;
    let (width, height) = d
        .dimensions()
        .ok_or_else(|| SkipReason("invalid JPEG header: no frame size".into()))?;
    within_budget(width as u32, height as u32, max_pixels)?;
    Ok(JpegHeaders {
        width: width as u32,
        height: height as u32,
        orientation: d
            .exif()
            .and_then(|e| Orientation::from_exif_chunk(e))
            .unwrap_or(Orientation::NoTransforms),
        source_rgb: matches!(d.input_colorspace(), Some(ColorSpace::YCbCr | ColorSpace::RGB)),
    })
}

fn decode_jpeg_strict(raw: &[u8], max_pixels: u64) -> Result<(RgbImage, Orientation, bool), SkipReason> {
    let mut d = strict_jpeg_decoder(raw, zune_core::colorspace::ColorSpace::RGB);
    let h = jpeg_headers(&mut d, max_pixels)?;
    let pixels = d
        .decode()
        .map_err(|e| SkipReason(format!("corrupt JPEG data: {e:?}")))?;
    let img = RgbImage::from_raw(h.width, h.height, pixels).ok_or_else(|| {
        SkipReason(format!(
            "JPEG decoder returned a short buffer for {}x{}",
            h.width, h.height
        ))
    })?;
    Ok((img, h.orientation, h.source_rgb))
}

/// The size of a JPEG whose bytes are kept as they are, `None` when they cannot be (another
/// size is wanted, it is rotated, or it is not colour data). Keeping needs no pixels, only
/// proof that the data decodes: [`crate::jpeg_entropy::walk`] proves it for the common layout;
/// otherwise the strict decode runs with luma output, so every block of every component is
/// still entropy-decoded (a corrupt or truncated stream is still an error, the same one),
/// while the chroma IDCT, upsampling and colour conversion are skipped.
fn kept_jpeg_size(raw: &[u8], s: &TranscodeSettings) -> Result<Option<(u32, u32)>, SkipReason> {
    let max_short_side = s.max_short_side;
    let mut d = strict_jpeg_decoder(raw, zune_core::colorspace::ColorSpace::Luma);
    let h = jpeg_headers(&mut d, s.max_pixels)?;
    let upright = h.orientation == Orientation::NoTransforms;
    if !(h.source_rgb && upright && bounded_size(h.width, h.height, max_short_side) == (h.width, h.height)) {
        return Ok(None);
    }
    if h.width == 0 || h.height == 0 {
        return Err(SkipReason("image has zero width or height".into()));
    }
    // The walk proves the common layout whole at a third of the cost; anything it cannot
    // prove is judged (and its error worded) by the decoder.
    if crate::jpeg_entropy::walk(raw) != crate::jpeg_entropy::Walk::Clean {
        d.decode()
            .map_err(|e| SkipReason(format!("corrupt JPEG data: {e:?}")))?;
    }
    Ok(Some((h.width, h.height)))
}

fn decode_other(raw: &[u8], format: ImageFormat, max_pixels: u64) -> Result<(RgbImage, Orientation, bool), SkipReason> {
    let reader = ImageReader::with_format(Cursor::new(raw), format);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| SkipReason(format!("decode failed ({format:?}): {e}")))?;
    let (width, height) = decoder.dimensions();
    within_budget(width, height, max_pixels)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img =
        DynamicImage::from_decoder(decoder).map_err(|e| SkipReason(format!("decode failed ({format:?}): {e}")))?;
    // Alpha is dropped (not composited), as PIL's convert("RGB") does.
    Ok((img.into_rgb8(), orientation, false))
}

/// Output size for a shorter-side bound, rounding the longer side to the nearest pixel.
pub fn bounded_size(width: u32, height: u32, max_short_side: Option<u32>) -> (u32, u32) {
    let Some(s) = max_short_side else {
        return (width, height);
    };
    let short = width.min(height);
    if short <= s {
        return (width, height);
    }
    let scale = s as f64 / short as f64;
    let w = if width == short {
        s
    } else {
        ((width as f64 * scale).round() as u32).max(1)
    };
    let h = if height == short {
        s
    } else {
        ((height as f64 * scale).round() as u32).max(1)
    };
    (w, h)
}

pub fn resize_rgb(img: &RgbImage, width: u32, height: u32, filter: ResizeFilter) -> RgbImage {
    let src = fr::images::ImageRef::new(img.width(), img.height(), img.as_raw(), fr::PixelType::U8x3)
        .expect("buffer matches dimensions");
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    fr::Resizer::new()
        .resize(&src, &mut dst, &fr::ResizeOptions::new().resize_alg(filter.alg()))
        .expect("same pixel type");
    RgbImage::from_raw(width, height, dst.into_vec()).expect("buffer matches dimensions")
}

pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, SkipReason> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 8);
    let (w, h) = (img.width(), img.height());
    if w > u16::MAX as u32 || h > u16::MAX as u32 {
        return Err(SkipReason(format!("{w}x{h} is too large for JPEG")));
    }
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(img.as_raw(), w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| SkipReason(format!("JPEG encode failed: {e}")))?;
    Ok(out)
}

/// Decodes, crops, resizes and encodes one image.
pub fn transcode(raw: &[u8], bbox: Option<[i32; 4]>, s: &TranscodeSettings) -> Result<Transcoded, SkipReason> {
    let cropped = s.crop_to_bbox && bbox.is_some();
    if !cropped && image::guess_format(raw).ok() == Some(ImageFormat::Jpeg) {
        if let Some((width, height)) = kept_jpeg_size(raw, s)? {
            return Ok(Transcoded {
                bytes: raw.to_vec(),
                width,
                height,
                reencoded: false,
            });
        }
    }
    let (mut img, mut keep) = decode_upright_within(raw, s.max_pixels)?;
    if let (true, Some(b)) = (s.crop_to_bbox, bbox) {
        let (w, h) = (img.width() as i32, img.height() as i32);
        // Devkit boxes are 1-based inclusive; clamp to the image as torchvision does.
        let x1 = (b[0] - 1).clamp(0, w - 1);
        let y1 = (b[1] - 1).clamp(0, h - 1);
        let x2 = b[2].clamp(x1 + 1, w);
        let y2 = b[3].clamp(y1 + 1, h);
        if b[2] <= b[0] || b[3] <= b[1] {
            return Err(SkipReason(format!("empty bounding box {b:?}")));
        }
        img = image::imageops::crop_imm(&img, x1 as u32, y1 as u32, (x2 - x1) as u32, (y2 - y1) as u32).to_image();
        keep = false;
    }
    let (w, h) = bounded_size(img.width(), img.height(), s.max_short_side);
    if (w, h) != img.dimensions() {
        img = resize_rgb(&img, w, h, s.filter);
        keep = false;
    }
    let bytes = if keep {
        raw.to_vec()
    } else {
        encode_jpeg(&img, s.quality)?
    };
    Ok(Transcoded {
        bytes,
        width: img.width(),
        height: img.height(),
        reencoded: !keep,
    })
}

/// A segmentation map resized (nearest neighbour, labels must not blend) to the image's size
/// and stored as PNG.
pub fn transcode_mask(raw: &[u8], width: u32, height: u32) -> Result<Vec<u8>, SkipReason> {
    let img = image::load_from_memory(raw).map_err(|e| SkipReason(format!("segmentation map: {e}")))?;
    // Class indices are 8-bit values: a 16-bit map would be scaled down, and a palette or
    // colour map turned into luma values that name no class.
    let gray = match img {
        image::DynamicImage::ImageLuma8(g) => g,
        image::DynamicImage::ImageRgb8(ref rgb) if rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]) => img.to_luma8(),
        other => {
            return Err(SkipReason(format!(
                "segmentation map is {:?}: class indices in an 8-bit grayscale PNG are needed (a palette or colour map names no class)",
                other.color()
            )))
        }
    };
    let gray = if gray.dimensions() == (width, height) {
        gray
    } else {
        image::imageops::resize(&gray, width, height, image::imageops::FilterType::Nearest)
    };
    let mut out = Vec::new();
    gray.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .map_err(|e| SkipReason(format!("segmentation map PNG encode: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 128]));
        encode_jpeg(&img, 90).unwrap()
    }

    #[test]
    fn bounded_size_keeps_aspect_and_small_images() {
        assert_eq!(bounded_size(500, 375, Some(256)), (341, 256));
        assert_eq!(bounded_size(375, 500, Some(256)), (256, 341));
        assert_eq!(bounded_size(200, 900, Some(256)), (200, 900));
        assert_eq!(bounded_size(300, 300, None), (300, 300));
        assert_eq!(bounded_size(10000, 257, Some(256)), (9961, 256));
    }

    #[test]
    fn small_upright_jpeg_keeps_its_bytes() {
        let raw = jpeg(64, 48);
        let t = transcode(&raw, None, &TranscodeSettings::default()).unwrap();
        assert!(!t.reencoded);
        assert_eq!(t.bytes, raw);
        assert_eq!((t.width, t.height), (64, 48));
    }

    /// A decompression bomb is refused from its headers, before its pixels are allocated: a
    /// 60000 x 60000 JPEG header (3.6 GP, 10.8 GB of RGB) over a few bytes of data.
    #[test]
    fn images_over_the_pixel_budget_are_skipped_before_decoding() {
        let small = jpeg(64, 48);
        let budget = |max_pixels| TranscodeSettings {
            max_pixels,
            max_short_side: None,
            ..Default::default()
        };
        assert!(transcode(&small, None, &budget(64 * 48)).is_ok());
        let err = transcode(&small, None, &budget(64 * 48 - 1)).unwrap_err().0;
        assert!(
            err.contains("64x48 is 3072 pixels, over the decoding budget of 3071"),
            "{err}"
        );
        let err = transcode(
            &small,
            Some([1, 1, 10, 10]),
            &TranscodeSettings {
                crop_to_bbox: true,
                ..budget(100)
            },
        );
        assert!(err.unwrap_err().0.contains("over the decoding budget"));
        let png = {
            let mut out = Vec::new();
            image::RgbImage::new(40, 30)
                .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
                .unwrap();
            out
        };
        assert!(decode_upright_within(&png, 1200).is_ok());
        assert!(decode_upright_within(&png, 1199).unwrap_err().0.contains("40x30"));
        // The bomb: the small JPEG's frame header (SOF0) rewritten to 60000 x 60000.
        let mut bomb = small.clone();
        let sof = bomb
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline JPEG");
        bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        let err = decode_upright(&bomb).unwrap_err().0;
        assert!(err.contains("60000x60000 is 3600000000 pixels"), "{err}");
    }

    #[test]
    fn large_jpeg_is_resized_and_reencoded() {
        let raw = jpeg(600, 400);
        let s = TranscodeSettings {
            max_short_side: Some(100),
            ..Default::default()
        };
        let t = transcode(&raw, None, &s).unwrap();
        assert!(t.reencoded);
        assert_eq!((t.width, t.height), (150, 100));
        let back = image::load_from_memory(&t.bytes).unwrap();
        assert_eq!((back.width(), back.height()), (150, 100));
    }

    #[test]
    fn grayscale_png_and_alpha_become_rgb_jpeg() {
        let gray = image::GrayImage::from_pixel(20, 10, image::Luma([77]));
        let mut png = Vec::new();
        gray.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        let t = transcode(&png, None, &TranscodeSettings::default()).unwrap();
        assert!(t.reencoded);
        let back = image::load_from_memory(&t.bytes).unwrap();
        assert_eq!(back.color(), image::ColorType::Rgb8);
        assert_eq!(image::guess_format(&t.bytes).unwrap(), ImageFormat::Jpeg);

        let rgba = image::RgbaImage::from_pixel(8, 8, image::Rgba([10, 200, 30, 0]));
        let mut png = Vec::new();
        rgba.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        let t = transcode(&png, None, &TranscodeSettings::default()).unwrap();
        let px = image::load_from_memory(&t.bytes).unwrap().to_rgb8().get_pixel(4, 4).0;
        assert!(px[1] > 150 && px[0] < 60, "colour survives alpha removal: {px:?}");
    }

    #[test]
    fn cmyk_grayscale_and_progressive_jpegs_become_rgb() {
        // Written by PIL: a CMYK JPEG of RGB (200, 40, 30), a grayscale one of value 90, and a
        // progressive RGB one of (20, 160, 60).
        let cases: [(&[u8], [u8; 3], bool); 3] = [
            (include_bytes!("../tests/fixtures/cmyk.jpg"), [200, 40, 30], true),
            (include_bytes!("../tests/fixtures/gray.jpg"), [90, 90, 90], true),
            (
                include_bytes!("../tests/fixtures/progressive.jpg"),
                [20, 160, 60],
                false,
            ),
        ];
        for (raw, rgb, reencoded) in cases {
            let t = transcode(raw, None, &TranscodeSettings::default()).unwrap();
            assert_eq!(t.reencoded, reencoded, "{rgb:?}");
            let back = image::load_from_memory(&t.bytes).unwrap();
            assert_eq!(back.color(), image::ColorType::Rgb8);
            let px = back.to_rgb8().get_pixel(5, 5).0;
            for c in 0..3 {
                assert!((px[c] as i32 - rgb[c] as i32).abs() <= 6, "{px:?} vs {rgb:?}");
            }
        }
    }

    #[test]
    fn bbox_crop_uses_one_based_inclusive_boxes() {
        let raw = jpeg(100, 80);
        let s = TranscodeSettings {
            crop_to_bbox: true,
            ..Default::default()
        };
        let t = transcode(&raw, Some([11, 21, 60, 70]), &s).unwrap();
        assert_eq!((t.width, t.height), (50, 50));
        // Boxes past the border are clamped, empty ones are a skip.
        let t = transcode(&raw, Some([90, 70, 500, 500]), &s).unwrap();
        assert_eq!((t.width, t.height), (11, 11));
        assert!(transcode(&raw, Some([50, 50, 40, 60]), &s).is_err());
    }

    #[test]
    fn garbage_is_a_skip_not_a_panic() {
        assert!(transcode(b"definitely not an image", None, &TranscodeSettings::default()).is_err());
        let raw = jpeg(64, 64);
        assert!(transcode(&raw[..20], None, &TranscodeSettings::default()).is_err());
        assert!(transcode(&[], None, &TranscodeSettings::default()).is_err());
    }

    /// A colour (palette-style) label map would become luma values naming no class: a skip.
    #[test]
    fn colour_label_maps_are_skipped_and_gray_ones_kept() {
        let png = |img: image::DynamicImage| {
            let mut out = Vec::new();
            img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
            out
        };
        let red = RgbImage::from_fn(4, 4, |x, _| image::Rgb(if x < 2 { [128, 0, 0] } else { [0, 0, 0] }));
        let err = transcode_mask(&png(red.into()), 4, 4).unwrap_err().0;
        assert!(err.contains("8-bit grayscale"), "{err}");
        let gray = RgbImage::from_fn(4, 4, |x, _| image::Rgb([x as u8; 3]));
        let kept = transcode_mask(&png(gray.into()), 4, 4).unwrap();
        let back = image::load_from_memory(&kept).unwrap().to_luma8();
        assert_eq!(back.get_pixel(3, 0).0[0], 3);
    }

    #[test]
    fn mask_resize_is_nearest() {
        let m = image::GrayImage::from_fn(4, 4, |x, _| image::Luma([if x < 2 { 3 } else { 150 }]));
        let mut png = Vec::new();
        m.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        let out = transcode_mask(&png, 8, 8).unwrap();
        let back = image::load_from_memory(&out).unwrap().to_luma8();
        assert_eq!(back.dimensions(), (8, 8));
        assert!(back.pixels().all(|p| p.0[0] == 3 || p.0[0] == 150));
    }
}
