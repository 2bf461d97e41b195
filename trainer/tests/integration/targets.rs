//! The trainer's on-device tokenizer against the pipeline's pre-tokenized grids.

use burn::prelude::*;
use pipeline::views::patch_vectors;
use pipeline::vocab::token_shards::read_token_shard;
use trainer::data::augment::to_chw;
use trainer::data::images::ImageSet;
use trainer::model::device_tokenizer::DeviceTokenizer;
use trainer::CpuBackend;

use crate::{fixture, load_vocab};

#[test]
fn device_targets_equal_pretokenized_grids() {
    let Some(f) = fixture() else { return };
    let vocab = load_vocab(&f.vocab_small);
    let manifest = pipeline::prepare::load_manifest(&f.dir).unwrap();
    let set = manifest
        .tokens
        .iter()
        .find(|t| f.vocab_small.ends_with(&t.vocab))
        .unwrap();
    let shard = set.shards.iter().find(|s| s.file.contains("val")).unwrap();
    let grids = read_token_shard(&f.dir.join(&set.dir).join(&shard.file)).unwrap();
    let images = ImageSet::load(&f.dir, "val").unwrap();
    let device = Default::default();
    // ViT-S/16 geometry: 224 views, targets from their 2x2 box mean (112), 8x8 patches.
    let tok = DeviceTokenizer::<CpuBackend>::new(&vocab, 16, &device).unwrap();
    let p = &vocab.header.preprocessing;
    let n = 96;
    let (mut total, mut differ) = (0, 0);
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let mut chw = Vec::new();
        let mut views = Vec::new();
        for &i in chunk {
            let s = &images.samples[i];
            assert_eq!(s.id, grids[i].id, "token rows follow image rows");
            let view = vocab.canonical_views(&images.image(i).unwrap())[0].clone();
            to_chw(&view, &mut chw);
            views.push(view);
        }
        let t = Tensor::<CpuBackend, 4>::from_data(TensorData::new(chw, [chunk.len(), 3, 224, 224]), &device);
        let got: Vec<i64> = tok.tokens(t).into_data().iter::<i64>().collect();
        for (k, &i) in chunk.iter().enumerate() {
            let mut pv = Vec::new();
            patch_vectors(&views[k], p, &mut pv);
            for j in 0..196 {
                total += 1;
                let (ours, theirs) = (got[k * 196 + j] as usize, grids[i].tokens[j] as usize);
                if ours == theirs {
                    continue;
                }
                differ += 1;
                // A disagreement must be a near-tie of the pipeline's own scores.
                let x = &pv[j * 192..(j + 1) * 192];
                let dot = |e: usize| -> f32 {
                    x.iter()
                        .zip(&vocab.embeddings[e * 192..(e + 1) * 192])
                        .map(|(a, b)| a * b)
                        .sum()
                };
                let gap = (dot(ours) - dot(theirs)).abs();
                assert!(
                    gap < 1e-3 * dot(theirs).abs().max(1.0),
                    "image {i} patch {j}: token {ours} vs {theirs}, score gap {gap}"
                );
            }
        }
    }
    assert!(differ * 1000 <= total, "{differ} of {total} tokens differ");
    eprintln!("device tokens: {differ} of {total} differ (near-ties)");
}

#[test]
fn pretokenized_targets_match_the_device_and_train() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let args = crate::args(
        f,
        &f.vocab_small,
        &tmp.path().join("pretok"),
        &[
            "--targets",
            "pretokenized",
            "--model",
            "tiny",
            "--method",
            "beit",
            "--batch-size",
            "8",
            "--max-steps",
            "2",
            "--log-every",
            "1",
            "--limit-images",
            "64",
        ],
    );
    let mut cfg = args.resolve().unwrap();
    assert!(!cfg.augment.random_crop && !cfg.augment.strong);
    cfg.vit = cfg.vit.with_dim(32).with_depth(1).with_heads(2);
    let mut set = ImageSet::load(&f.dir, "train").unwrap().truncate(64);
    set.attach_tokens(cfg.vocab_sha256.as_ref().unwrap()).unwrap();
    let vocab = load_vocab(&f.vocab_small);
    let device = Default::default();
    let tok = DeviceTokenizer::<CpuBackend>::new(&vocab, 16, &device).unwrap();
    let (mut total, mut differ, mut flips) = (0, 0, 0);
    for index in 0..4 {
        let b = trainer::data::loader::make_batch(&set, &cfg.augment, 8, 5, index).unwrap();
        let host = b.tokens.clone().expect("tokens attached");
        let t = Tensor::<CpuBackend, 4>::from_data(TensorData::new(b.images.clone(), [8, 3, 224, 224]), &device);
        let got: Vec<i64> = tok.tokens(t).into_data().iter::<i64>().collect();
        total += got.len();
        differ += got.iter().zip(&host).filter(|(a, b)| a != b).count();
        // Flipped views must have been matched with the flipped grids: count rows that equal the
        // flipped grid and differ from the plain one.
        let order = trainer::data::loader::epoch_order(&set, 5, 0, 1);
        for (k, &i) in order[index as usize * 8..(index as usize + 1) * 8].iter().enumerate() {
            let grids = set.samples[i].tokens.as_ref().unwrap();
            let row: Vec<u16> = host[k * 196..(k + 1) * 196].iter().map(|&v| v as u16).collect();
            if row == grids[1] && row != grids[0] {
                flips += 1;
            }
        }
    }
    assert!(differ * 1000 <= total, "{differ} of {total} tokens differ");
    assert!(
        flips > 4 && flips < 28,
        "about half the views are flipped: {flips} of 32"
    );
    let s = crate::run(&cfg, false);
    assert_eq!(s.steps, 2);

    // Geometry that does not match the grids is refused.
    let bad = crate::args(
        f,
        &f.vocab_small,
        tmp.path(),
        &["--targets", "pretokenized", "--model", "cpu-tiny"],
    );
    let err = bad.resolve().unwrap_err().to_string();
    assert!(err.contains("224 px views and a 14x14 grid"), "{err}");
}
