//! `trainer visualize`: eval images, the patches a pre-trained method hid from its encoder and
//! what it predicts there, drawn as one PNG grid (a row per image).
//!
//! Columns: the image; the image with the hidden patches in [`MASK_GRAY`]; the prediction in
//! place of the hidden patches; for token methods, every patch's target token. Tokens are
//! drawn as their vocabulary entries when the vocabulary's entries are patches (k-means,
//! random patches); a random-projection vocabulary has no picture, so the prediction column
//! then tints each hidden patch green (the target token) or red (another one).

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use image::{Rgb, RgbImage};
use pipeline::vocab::tokenizer::Vocabulary;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::augment::{MEAN, STD};
use crate::data::images::ImageSet;
use crate::data::loader::{eval_batch, HostBatch};
use crate::error::{ConfigError, DataError, Result, RunFolderError};
use crate::model::device_tokenizer::DeviceTokenizer;
use crate::model::method::{with_method, WithMethod};
use crate::model::objective::{Objective, Predicted};
use crate::train::config::{init_paths, load_config, PretrainConfig};
use crate::train::pretrain::{device_batch, run_vocabulary};
use crate::train::tensor_file::load_checkpoint_params;

/// The colour of a hidden patch in the masked column.
pub const MASK_GRAY: [u8; 3] = [128, 128, 128];
/// White space between cells.
const GAP: u32 = 4;
/// The most pixels a grid may have (192 MB of RGB), checked before anything is drawn.
const MAX_GRID_PIXELS: u64 = 64 << 20;

/// What to draw.
#[derive(Debug, Clone)]
pub struct VisualizeSpec {
    /// Images of the split, spread evenly over it.
    pub images: usize,
    /// Each image pixel drawn as `zoom` x `zoom`.
    pub zoom: u32,
    /// The masks are drawn from this seed (as a training step's are from the run's).
    pub mask_seed: u64,
    /// Eval view: resize to size / crop_ratio, center crop.
    pub crop_ratio: f64,
}

/// How the hidden patches were drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drawing {
    /// Predicted tokens as their vocabulary entries.
    Entries,
    /// Predicted tokens as right (green) or wrong (red).
    Correctness,
    /// Predicted pixels.
    Pixels,
}

#[derive(Debug, Clone)]
pub struct VisualizeSummary {
    pub out: PathBuf,
    pub images: usize,
    pub width: u32,
    pub height: u32,
    pub drawing: Drawing,
    /// Hidden patches per image.
    pub hidden: usize,
    /// Share of hidden patches whose predicted token is the target (token methods).
    pub accuracy: Option<f64>,
}

/// A reconstruction on the host: per image, the hidden positions and what was predicted.
struct HostReconstruction {
    hidden: Vec<Vec<usize>>,
    content: HostContent,
    /// Every patch's target token, per image (token methods).
    targets: Option<Vec<Vec<i64>>>,
}

enum HostContent {
    Tokens(Vec<Vec<i64>>),
    /// Per image, `m` patches of `3 * patch * patch` normalized values (`[c, y, x]` each).
    Pixels(Vec<Vec<f32>>),
}

/// Draws `spec.images` images of `split` with what the pre-training run (or checkpoint) `run`
/// predicts for the patches it hides, into the PNG `out`.
pub fn visualize<B: AutodiffBackend>(
    run: &Path,
    data: &Path,
    split: &str,
    spec: &VisualizeSpec,
    out: &Path,
    device: &B::Device,
) -> Result<VisualizeSummary> {
    let (run_dir, file) = init_paths(run);
    let cfg = load_config(&run_dir)?;
    let vocab = run_vocabulary(&cfg)?;
    let set = ImageSet::load(data, split)?;
    if set.samples.is_empty() || spec.images == 0 {
        return Err(DataError::TooSmall {
            dir: data.to_path_buf(),
            split: split.to_string(),
            rows: set.samples.len(),
            batch: spec.images.max(1),
        }
        .into());
    }
    let indices = set.spread(spec.images);
    let n = indices.len();
    let size = cfg.vit.image_size;
    let cell = size as u64 * spec.zoom.max(1) as u64;
    let most = 4 * cell * cell * n as u64;
    if most > MAX_GRID_PIXELS {
        let message = format!(
            "{n} images of {size} px at this zoom make a grid of up to {} M pixels, over the {} M allowed: draw fewer images or zoom less",
            most >> 20,
            MAX_GRID_PIXELS >> 20
        );
        return Err(ConfigError::invalid("zoom", spec.zoom, message).into());
    }
    let host = eval_batch(&set, &indices, size as u32, spec.crop_ratio)?;
    let pixels = host.images.clone();
    let job = Predict {
        cfg: &cfg,
        file: &file,
        vocab: vocab.as_ref(),
        host,
        mask_seed: spec.mask_seed,
        device,
    };
    let rec = with_method::<B, _>(cfg.method, &cfg.options, job)?;
    let drawing = match (&rec.content, &vocab) {
        (HostContent::Pixels(_), _) => Drawing::Pixels,
        (HostContent::Tokens(_), Some(v)) if v.header.kind.draws_as_patches() => Drawing::Entries,
        (HostContent::Tokens(_), _) => Drawing::Correctness,
    };
    let grid = Grid {
        size,
        patch: cfg.vit.patch_size,
        zoom: spec.zoom.max(1),
        columns: if rec.targets.is_some() && drawing == Drawing::Entries {
            4
        } else {
            3
        },
        rows: n,
    };
    let image = grid.draw(&pixels, &rec, drawing, vocab.as_ref());
    pipeline::shard::write_png(out, &image)?;
    Ok(VisualizeSummary {
        out: out.to_path_buf(),
        images: n,
        width: image.width(),
        height: image.height(),
        drawing,
        hidden: rec.hidden[0].len(),
        accuracy: rec.accuracy(),
    })
}

/// The run's model with every parameter from its checkpoint, asked for its reconstruction.
struct Predict<'a, B: AutodiffBackend> {
    cfg: &'a PretrainConfig,
    file: &'a Path,
    vocab: Option<&'a Vocabulary>,
    host: HostBatch,
    mask_seed: u64,
    device: &'a B::Device,
}

impl<B: AutodiffBackend> WithMethod<B> for Predict<'_, B> {
    type Output = Result<HostReconstruction>;

    fn run<M>(self, options: &M::Options) -> Self::Output
    where
        M: Objective<B> + AutodiffModule<B>,
        M::InnerModule: Objective<B::InnerBackend, Options = M::Options>,
    {
        let Predict {
            cfg,
            file,
            vocab,
            host,
            mask_seed,
            device,
        } = self;
        let spec = cfg.spec(options);
        // The skeleton's values are all replaced by the checkpoint's.
        let skeleton = M::build(&spec, &mut ChaCha8Rng::seed_from_u64(0), device).valid();
        let model = load_checkpoint_params(skeleton, file, device)?;
        let tokenizer = match (M::TOKEN_TARGETS, vocab) {
            (true, Some(v)) => Some(DeviceTokenizer::new(v, cfg.vit.patch_size, device)?),
            _ => None,
        };
        let batch =
            device_batch::<B::InnerBackend, M::InnerModule>(&spec, tokenizer.as_ref(), host, (0, mask_seed), device);
        let rec = model.reconstruct(&batch).ok_or_else(|| RunFolderError {
            path: file.to_path_buf(),
            message: format!(
                "{} predicts no patch content (it compares views): there is nothing to draw",
                cfg.method.name()
            ),
        })?;
        let b = batch.images.dims()[0];
        let rows_i64 = |t: Tensor<B::InnerBackend, 2, Int>| -> Vec<Vec<i64>> {
            let v: Vec<i64> = t.into_data().convert::<i64>().to_vec().expect("int data");
            v.chunks(v.len() / b).map(<[i64]>::to_vec).collect()
        };
        let hidden = rows_i64(rec.hidden)
            .into_iter()
            .map(|r| r.into_iter().map(|p| p as usize).collect())
            .collect();
        let content = match rec.patches {
            Predicted::Tokens(t) => HostContent::Tokens(rows_i64(t)),
            Predicted::Pixels(p) => {
                let v: Vec<f32> = p.into_data().convert::<f32>().to_vec().expect("float data");
                HostContent::Pixels(v.chunks(v.len() / b).map(<[f32]>::to_vec).collect())
            }
        };
        Ok(HostReconstruction {
            hidden,
            content,
            targets: batch.targets.map(rows_i64),
        })
    }
}

impl HostReconstruction {
    fn accuracy(&self) -> Option<f64> {
        let (HostContent::Tokens(pred), Some(targets)) = (&self.content, &self.targets) else {
            return None;
        };
        let (mut right, mut all) = (0usize, 0usize);
        for ((hidden, pred), target) in self.hidden.iter().zip(pred).zip(targets) {
            right += hidden.iter().zip(pred).filter(|(&p, &t)| target[p] == t).count();
            all += hidden.len();
        }
        Some(right as f64 / all.max(1) as f64)
    }
}

/// The layout: `rows` images of `size` px, `columns` cells each, every pixel `zoom` times.
struct Grid {
    size: usize,
    patch: usize,
    zoom: u32,
    columns: u32,
    rows: usize,
}

impl Grid {
    fn cell(&self) -> u32 {
        self.size as u32 * self.zoom
    }

    fn draw(&self, pixels: &[f32], rec: &HostReconstruction, drawing: Drawing, vocab: Option<&Vocabulary>) -> RgbImage {
        let (c, cols) = (self.cell(), self.columns);
        let mut out = RgbImage::from_pixel(
            cols * c + (cols - 1) * GAP,
            self.rows as u32 * c + (self.rows as u32 - 1) * GAP,
            Rgb([255, 255, 255]),
        );
        let per_image = 3 * self.size * self.size;
        for (i, chw) in pixels.chunks(per_image).enumerate() {
            let original = rgb_of(chw, self.size);
            let hidden = &rec.hidden[i];
            let mut masked = original.clone();
            let mut predicted = original.clone();
            for (j, &p) in hidden.iter().enumerate() {
                self.fill(&mut masked, p, |_, _| MASK_GRAY);
                match (&rec.content, drawing) {
                    (HostContent::Pixels(px), _) => {
                        let values = &px[i][j * 3 * self.patch * self.patch..(j + 1) * 3 * self.patch * self.patch];
                        self.paint_values(&mut predicted, p, values);
                    }
                    (HostContent::Tokens(t), Drawing::Entries) => {
                        self.paint_entry(&mut predicted, p, vocab.expect("entries need the vocabulary"), t[i][j]);
                    }
                    (HostContent::Tokens(t), _) => {
                        let right = rec.targets.as_ref().is_some_and(|tg| tg[i][p] == t[i][j]);
                        let tint = if right { [40, 200, 60] } else { [220, 40, 40] };
                        self.fill(&mut predicted, p, |y, x| blend(original.get_pixel(x, y).0, tint));
                    }
                }
            }
            let mut cells = vec![original, masked, predicted];
            if cols == 4 {
                let mut target = RgbImage::new(self.size as u32, self.size as u32);
                let tokens = &rec.targets.as_ref().expect("four columns draw the targets")[i];
                for (p, &t) in tokens.iter().enumerate() {
                    self.paint_entry(&mut target, p, vocab.expect("entries need the vocabulary"), t);
                }
                cells.push(target);
            }
            for (k, cell) in cells.iter().enumerate() {
                self.blit(&mut out, cell, k as u32 * (c + GAP), i as u32 * (c + GAP));
            }
        }
        out
    }

    /// Sets every pixel of grid patch `p` to `colour(y, x)` (image coordinates).
    fn fill(&self, img: &mut RgbImage, p: usize, colour: impl Fn(u32, u32) -> [u8; 3]) {
        let g = self.size / self.patch;
        let (y0, x0) = ((p / g * self.patch) as u32, (p % g * self.patch) as u32);
        for y in y0..y0 + self.patch as u32 {
            for x in x0..x0 + self.patch as u32 {
                img.put_pixel(x, y, Rgb(colour(y, x)));
            }
        }
    }

    /// Patch `p` from `3 * patch * patch` normalized values laid out `[c, y, x]`.
    fn paint_values(&self, img: &mut RgbImage, p: usize, values: &[f32]) {
        let (g, s) = (self.size / self.patch, self.patch);
        let (y0, x0) = (p / g * s, p % g * s);
        self.fill(img, p, |y, x| {
            let (py, px) = (y as usize - y0, x as usize - x0);
            std::array::from_fn(|c| to_u8(values[(c * s + py) * s + px], c))
        });
    }

    /// Patch `p` as vocabulary entry `token`, scaled from the entry's patch to the ViT's.
    fn paint_entry(&self, img: &mut RgbImage, p: usize, vocab: &Vocabulary, token: i64) {
        let entry = pipeline::vocab::entry_pixels(vocab, token.clamp(0, vocab.header.size as i64 - 1) as usize);
        let e = vocab.header.preprocessing.patch_size as usize;
        let (g, s) = (self.size / self.patch, self.patch);
        let (y0, x0) = (p / g * s, p % g * s);
        self.fill(img, p, |y, x| {
            let (ey, ex) = ((y as usize - y0) * e / s, (x as usize - x0) * e / s);
            let k = (ey * e + ex) * 3;
            [entry[k], entry[k + 1], entry[k + 2]]
        });
    }

    /// `cell` scaled `zoom` times with its top-left corner at (`left`, `top`) of `out`.
    fn blit(&self, out: &mut RgbImage, cell: &RgbImage, left: u32, top: u32) {
        let z = self.zoom;
        for (x, y, px) in cell.enumerate_pixels() {
            for dy in 0..z {
                for dx in 0..z {
                    out.put_pixel(left + x * z + dx, top + y * z + dy, *px);
                }
            }
        }
    }
}

/// A normalized `[3, size, size]` view as RGB.
fn rgb_of(chw: &[f32], size: usize) -> RgbImage {
    let plane = size * size;
    RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let i = y as usize * size + x as usize;
        Rgb(std::array::from_fn(|c| to_u8(chw[c * plane + i], c)))
    })
}

/// A normalized value of channel `c` as a byte.
fn to_u8(v: f32, c: usize) -> u8 {
    ((v * STD[c] + MEAN[c]) * 255.0).round().clamp(0.0, 255.0) as u8
}

/// Half `tint`, half the pixel.
fn blend(px: [u8; 3], tint: [u8; 3]) -> [u8; 3] {
    std::array::from_fn(|c| ((px[c] as u16 + tint[c] as u16) / 2) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prediction of pixels lands on its own patch, in its own colours.
    #[test]
    fn predicted_pixels_are_drawn_on_their_patch() {
        let (size, patch) = (8, 4);
        let grid = Grid {
            size,
            patch,
            zoom: 2,
            columns: 3,
            rows: 1,
        };
        let view = vec![0.0f32; 3 * size * size]; // the dataset mean everywhere
                                                  // Patch 3 (bottom right) predicted as pure red: normalized (1 - mean) / std, (0 - mean) / std.
        let red: Vec<f32> = (0..3)
            .flat_map(|c| std::iter::repeat_n(([1.0, 0.0, 0.0][c] - MEAN[c]) / STD[c], patch * patch))
            .collect();
        let rec = HostReconstruction {
            hidden: vec![vec![3]],
            content: HostContent::Pixels(vec![red]),
            targets: None,
        };
        let img = grid.draw(&view, &rec, Drawing::Pixels, None);
        let c = (size * 2) as u32;
        assert_eq!((img.width(), img.height()), (3 * c + 2 * GAP, c));
        let mean = to_u8(0.0, 0);
        assert_eq!(img.get_pixel(0, 0).0[0], mean, "the image column");
        assert_eq!(
            img.get_pixel(c + GAP + c - 1, c - 1).0,
            MASK_GRAY,
            "masked: patch 3 hidden"
        );
        assert_ne!(img.get_pixel(c + GAP, 0).0, MASK_GRAY, "masked: patch 0 visible");
        let left = 2 * (c + GAP);
        assert_eq!(
            img.get_pixel(left + c - 1, c - 1).0,
            [255, 0, 0],
            "the prediction on patch 3"
        );
        assert_eq!(img.get_pixel(left, 0).0[0], mean, "visible patches stay");
    }

    #[test]
    fn token_accuracy_counts_hidden_patches_only() {
        let rec = HostReconstruction {
            hidden: vec![vec![0, 2], vec![1, 3]],
            content: HostContent::Tokens(vec![vec![5, 6], vec![7, 0]]),
            targets: Some(vec![vec![5, 9, 1, 9], vec![9, 7, 9, 8]]),
        };
        assert_eq!(rec.accuracy(), Some(0.5));
    }
}
