//! The visual vocabulary file and the tokenizer: a patch's token is the entry with the largest
//! cosine similarity. Entries are unit vectors, so that is the argmax of dot products, computed
//! for many patches at once as one GEMM (`nearest::argmax_dot`).

use std::collections::HashMap;
use std::path::Path;

use image::RgbImage;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use schemas::vocab::{EMBEDDINGS, VOCAB_HEADER_KEY, VOCAB_VERSION};
use schemas::VocabHeader;

use crate::error::{IoContext, PipelineError, Result};
use crate::shard::write_atomic;
use crate::views::{canonical_view, patch_vectors};
use crate::vocab::nearest::argmax_dot;

#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub header: VocabHeader,
    /// [size, dim] row-major, unit rows.
    pub embeddings: Vec<f32>,
}

impl Vocabulary {
    fn bad(path: &Path, field: &str, message: impl Into<String>) -> PipelineError {
        PipelineError::BadField {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Writes the safetensors file atomically; returns its sha256.
    pub fn save(&self, path: &Path) -> Result<String> {
        let bytes: Vec<u8> = self.embeddings.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![self.header.size, self.header.dim], &bytes)
            .map_err(|e| Self::bad(path, EMBEDDINGS, e.to_string()))?;
        let mut meta = HashMap::new();
        meta.insert(
            VOCAB_HEADER_KEY.to_string(),
            serde_json::to_string(&self.header).expect("serializable"),
        );
        let out = safetensors::serialize([(EMBEDDINGS, view)], Some(meta))
            .map_err(|e| Self::bad(path, EMBEDDINGS, e.to_string()))?;
        write_atomic(path, &out)?;
        Ok(sha256_hex(&out))
    }

    /// Loads and validates a vocabulary file; returns it with the file's sha256.
    pub fn load(path: &Path) -> Result<(Vocabulary, String)> {
        let bytes = std::fs::read(path).at(path)?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| Self::bad(path, "header", e.to_string()))?;
        let header_json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(VOCAB_HEADER_KEY))
            .ok_or_else(|| {
                Self::bad(
                    path,
                    VOCAB_HEADER_KEY,
                    "missing from __metadata__ (not a splitmask vocabulary)",
                )
            })?;
        let header: VocabHeader =
            serde_json::from_str(header_json).map_err(|e| Self::bad(path, VOCAB_HEADER_KEY, e.to_string()))?;
        if header.version != VOCAB_VERSION {
            return Err(Self::bad(
                path,
                "version",
                format!("{} (this build reads {VOCAB_VERSION})", header.version),
            ));
        }
        header
            .preprocessing
            .check()
            .map_err(|m| Self::bad(path, "preprocessing", m))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Self::bad(path, "tensors", e.to_string()))?;
        let t = st
            .tensor(EMBEDDINGS)
            .map_err(|e| Self::bad(path, EMBEDDINGS, e.to_string()))?;
        if t.dtype() != Dtype::F32 || t.shape() != [header.size, header.dim] || header.dim != header.preprocessing.dim()
        {
            return Err(Self::bad(
                path,
                EMBEDDINGS,
                format!(
                    "{:?} {:?} does not match the header's [{}, {}]",
                    t.dtype(),
                    t.shape(),
                    header.size,
                    header.dim
                ),
            ));
        }
        if header.size == 0 || header.size > u16::MAX as usize + 1 {
            return Err(Self::bad(
                path,
                "size",
                format!("{} entries do not fit u16 tokens", header.size),
            ));
        }
        let embeddings = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Ok((Vocabulary { header, embeddings }, sha256_hex(&bytes)))
    }

    /// Tokens of patch vectors ([n, dim]).
    pub fn tokenize_patches(&self, patches: &[f32]) -> Vec<u16> {
        argmax_dot(patches, &self.embeddings, self.header.dim)
            .0
            .into_iter()
            .map(|t| t as u16)
            .collect()
    }

    /// Tokens of encoder views (`source_view_size` squares): `grid²` tokens per view, in order.
    pub fn tokenize_views(&self, views: &[RgbImage]) -> Vec<u16> {
        let mut patches = Vec::with_capacity(views.len() * self.header.preprocessing.grid().pow(2) * self.header.dim);
        for v in views {
            patch_vectors(v, &self.header.preprocessing, &mut patches);
        }
        self.tokenize_patches(&patches)
    }

    /// The canonical view of an image and of its horizontal flip.
    pub fn canonical_views(&self, img: &RgbImage) -> [RgbImage; 2] {
        let v = canonical_view(img, self.header.preprocessing.source_view_size);
        let flipped = image::imageops::flip_horizontal(&v);
        [v, flipped]
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::kmeans::normalize_rows;
    use rand::{Rng, SeedableRng};
    use schemas::vocab::VocabKind;
    use schemas::Preprocessing;

    fn random_vocab(size: usize, seed: u64) -> Vocabulary {
        let p = Preprocessing::paper();
        let d = p.dim();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut e: Vec<f32> = (0..size * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        normalize_rows(&mut e, d);
        Vocabulary {
            header: VocabHeader {
                version: VOCAB_VERSION,
                kind: VocabKind::RandomProjection,
                seed,
                size,
                dim: d,
                preprocessing: p,
                source_manifest_sha256: None,
                kmeans: None,
            },
            embeddings: e,
        }
    }

    #[test]
    fn an_entry_maps_to_itself_and_contrast_keeps_the_token() {
        let v = random_vocab(512, 1);
        let d = v.header.dim;
        // Patches equal to entries (at any positive scale) map to those entries.
        let picks = [0usize, 7, 300, 511];
        let patches: Vec<f32> = picks
            .iter()
            .flat_map(|&i| v.embeddings[i * d..(i + 1) * d].iter().map(|x| x * 3.5))
            .collect();
        assert_eq!(
            v.tokenize_patches(&patches),
            picks.iter().map(|&i| i as u16).collect::<Vec<_>>()
        );

        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f32> = (0..200 * d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let base = v.tokenize_patches(&x);
        for a in [0.25f32, 2.0, 9.0] {
            let scaled: Vec<f32> = x.iter().map(|t| t * a).collect();
            assert_eq!(v.tokenize_patches(&scaled), base, "contrast x{a}");
        }
        // A negative scale (inverted contrast) is a different pattern and changes most tokens.
        let inv: Vec<f32> = x.iter().map(|t| -t).collect();
        let same = v
            .tokenize_patches(&inv)
            .iter()
            .zip(&base)
            .filter(|(a, b)| a == b)
            .count();
        assert!(same < 20, "{same}");
    }

    #[test]
    fn flat_patches() {
        let v = random_vocab(64, 2);
        let p = &v.header.preprocessing;
        // A view at exactly the normalization mean has all-zero patch vectors: token 0.
        let mean_px: [u8; 3] = std::array::from_fn(|c| (p.mean[c] * 255.0).round() as u8);
        let view = RgbImage::from_pixel(224, 224, image::Rgb(mean_px));
        let mut patches = Vec::new();
        crate::views::patch_vectors(&view, p, &mut patches);
        let norm: f32 = patches[..192].iter().map(|x| x * x).sum::<f32>().sqrt();
        // Integer pixels land within half a level of the mean: a near-zero vector.
        assert!(norm < 0.2, "{norm}");
        let exact_zero = vec![0f32; 192 * 3];
        assert_eq!(v.tokenize_patches(&exact_zero), vec![0, 0, 0]);
        // Any other flat color is a direction like any other: all its patches share one token,
        // and brighter/darker versions of the same deviation keep it.
        let red = v.tokenize_views(&[RgbImage::from_pixel(224, 224, image::Rgb([220, 40, 40]))]);
        assert!(red.iter().all(|&t| t == red[0]));
    }

    #[test]
    fn save_load_round_trip_and_rejects_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let v = random_vocab(32, 3);
        let path = dir.path().join("v.safetensors");
        let sha = v.save(&path).unwrap();
        let (back, sha2) = Vocabulary::load(&path).unwrap();
        assert_eq!(back, v);
        assert_eq!(sha, sha2);

        let foreign = dir.path().join("model.safetensors");
        let data = vec![0u8; 16];
        let view = TensorView::new(Dtype::F32, vec![4], &data).unwrap();
        std::fs::write(&foreign, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
        let err = Vocabulary::load(&foreign).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains(VOCAB_HEADER_KEY),
            "{err}"
        );

        // Hostile geometry is an error naming the file and the field, before anything is built.
        type Edit = fn(&mut Preprocessing);
        let edits: [(&str, Edit); 5] = [
            ("patch_size 0", |p| p.patch_size = 0),
            ("view_size 4", |p| p.view_size = 4),
            ("source_view_size 4000000000", |p| p.source_view_size = 4_000_000_000),
            ("view_size 1000000", |p| {
                p.view_size = 1_000_000;
                p.source_view_size = 2_000_000;
            }),
            ("std [0.0", |p| p.std[0] = 0.0),
        ];
        for (says, edit) in edits {
            let mut bad = random_vocab(8, 1);
            edit(&mut bad.header.preprocessing);
            let file = dir.path().join("bad.safetensors");
            bad.save(&file).unwrap();
            let err = Vocabulary::load(&file).unwrap_err().to_string();
            assert!(
                err.contains("bad.safetensors") && err.contains("preprocessing") && err.contains(says),
                "{says}: {err}"
            );
        }
    }
}
