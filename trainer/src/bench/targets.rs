//! Agreement of the trainer's on-device tokenizer with the pipeline's host tokenizer, on the
//! device and in the float type a run uses: the check that `--precision bf16` on a GPU trains
//! on the targets `pipeline tokenize` writes. Disagreements must be near-ties of the host's
//! own f32 scores.

use std::path::Path;

use burn::prelude::*;
use pipeline::views::patch_vectors;
use pipeline::vocab::tokenizer::Vocabulary;
use serde::Serialize;

use crate::data::augment::to_chw;
use crate::data::images::ImageSet;
use crate::error::Result;
use crate::model::device_tokenizer::DeviceTokenizer;

/// Images uploaded per device call.
const CHUNK: usize = 32;
/// A disagreement is a near-tie when the host's scores of the two entries differ by less than
/// this fraction of the winning score (f32 GEMMs sum in different orders).
const NEAR_TIE: f32 = 1e-3;

#[derive(Debug, Clone, Serialize)]
pub struct TargetAgreement {
    pub images: usize,
    pub tokens: usize,
    /// Tokens where the device's target differs from the host's.
    pub differ: usize,
    /// Of those, the ones that are not near-ties: 0 when the device trains on the corpus's targets.
    pub not_near_ties: usize,
    /// The largest score gap of a disagreement, relative to the winning score.
    pub worst_relative_gap: f32,
}

impl TargetAgreement {
    pub fn agrees(&self) -> bool {
        self.not_near_ties == 0 && self.differ * 1000 <= self.tokens
    }
}

/// Tokenizes the canonical views of the first `images` rows of `split` on `device` (through
/// [`DeviceTokenizer::upload`], as pre-training does) and on the host, and compares them.
pub fn target_agreement<B: Backend>(
    data: &Path,
    split: &str,
    vocab: &Vocabulary,
    vit_patch: usize,
    images: usize,
    device: &B::Device,
) -> Result<TargetAgreement> {
    let set = ImageSet::load(data, split)?;
    let n = images.min(set.samples.len());
    let tok = DeviceTokenizer::<B>::new(vocab, vit_patch, device)?;
    let (p, d) = (&vocab.header.preprocessing, vocab.header.dim);
    let size = p.source_view_size as usize;
    let mut r = TargetAgreement {
        images: n,
        tokens: 0,
        differ: 0,
        not_near_ties: 0,
        worst_relative_gap: 0.0,
    };
    for start in (0..n).step_by(CHUNK) {
        let rows = start..(start + CHUNK).min(n);
        let (mut chw, mut vectors) = (Vec::new(), Vec::new());
        for i in rows.clone() {
            let view = vocab.canonical_views(&set.image(i)?)[0].clone();
            to_chw(&view, &mut chw);
            patch_vectors(&view, p, &mut vectors);
        }
        let (_, tokens) = tok.upload(chw, [rows.len(), size], device);
        let ours: Vec<i64> = tokens.into_data().iter::<i64>().collect();
        let theirs = vocab.tokenize_patches(&vectors);
        let score = |j: usize, e: usize| -> f32 {
            vectors[j * d..(j + 1) * d]
                .iter()
                .zip(&vocab.embeddings[e * d..(e + 1) * d])
                .map(|(a, b)| a * b)
                .sum()
        };
        r.tokens += theirs.len();
        for (j, (&o, &t)) in ours.iter().zip(&theirs).enumerate() {
            if o as usize == t as usize {
                continue;
            }
            r.differ += 1;
            let win = score(j, t as usize);
            let gap = (win - score(j, o as usize)).abs() / win.abs().max(1e-6);
            r.worst_relative_gap = r.worst_relative_gap.max(gap);
            if gap >= NEAR_TIE {
                r.not_near_ties += 1;
            }
        }
    }
    Ok(r)
}
