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

/// Under `--precision bf16` on LibTorch the device targets are the f32 targets, token for
/// token: the tokenizer scores the host's f32 pixels in f32 and only the encoder's copy is
/// rounded. The control scores the rounded view in bf16, as the trainer did before, and must
/// move targets, or this test could not tell the two apart. Then a short bf16 SplitMask run
/// trains, its losses finite and logged beyond bf16's resolution.
#[cfg(feature = "tch")]
#[test]
fn bf16_device_targets_equal_f32_targets_on_libtorch() {
    use burn::backend::LibTorch;
    use burn::tensor::{bf16, DType};
    type Half = LibTorch<bf16>;
    let Some(f) = fixture() else { return };
    let vocab = load_vocab(&f.vocab_full);
    let images = ImageSet::load(&f.dir, "val").unwrap();
    let device = Default::default();
    let n = 32;
    let mut pixels = Vec::new();
    for i in 0..n {
        to_chw(&vocab.canonical_views(&images.image(i).unwrap())[0], &mut pixels);
    }
    let full = DeviceTokenizer::<LibTorch<f32>>::new(&vocab, 16, &device).unwrap();
    let exact = Tensor::<LibTorch<f32>, 4>::from_data(TensorData::new(pixels.clone(), [n, 3, 224, 224]), &device);
    let want: Vec<i64> = full.tokens(exact).into_data().iter::<i64>().collect();

    let half = DeviceTokenizer::<Half>::new(&vocab, 16, &device).unwrap();
    let (view, tokens) = half.upload(pixels, [n, 224], &device);
    assert_eq!(view.dtype(), DType::BF16, "the encoder's copy is in the backend's type");
    let got: Vec<i64> = tokens.into_data().iter::<i64>().collect();
    assert_eq!(got, want, "bf16 targets equal f32 targets");

    // burn keys a device's default float type by the device type, which LibTorch<f32> and
    // LibTorch<bf16> share: the first backend to use the CPU device in a process sets it for
    // both, so the control names bf16 and the training run below gets a process of its own.
    let (v, d) = (vocab.header.size, vocab.header.dim);
    let entries =
        Tensor::<Half, 2>::from_data(TensorData::new(vocab.embeddings.clone(), [v, d]), &device).cast(DType::BF16);
    let vectors = half.patch_vectors(view).reshape([n * 196, d]);
    assert_eq!(vectors.dtype(), DType::BF16);
    let rounded: Vec<i64> = vectors
        .matmul(entries.transpose())
        .argmax(1)
        .into_data()
        .iter::<i64>()
        .collect();
    let moved = rounded.iter().zip(&want).filter(|(a, b)| a != b).count();
    eprintln!("scored in bf16: {moved} of {} targets move", want.len());
    assert!(moved * 100 > want.len(), "bf16 scoring moves targets: {moved}");

    // The device script's check, in a process of its own: LibTorch bf16 against the host.
    #[rustfmt::skip]
    let check = [
        "bench-targets", "--data", &f.dir.display().to_string(), "--vocab", &f.vocab_full.display().to_string(),
        "--images", "40", "--backend", "tch", "--precision", "bf16",
    ];
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(check)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["tokens"], 40 * 196, "{line}");
    assert_eq!(line["not_near_ties"], 0, "{line}");
    assert_eq!(line["impl_name"], "burn-tch-cpu-bf16", "{line}");

    let out = tempfile::tempdir().unwrap();
    #[rustfmt::skip]
    let argv = [
        "--quiet", "pretrain", "--recipes", &crate::workspace().join("datasets").display().to_string(),
        "--data", &f.dir.display().to_string(),
        "--vocab", &f.vocab_full.display().to_string(), "--out", &out.path().display().to_string(),
        "--method", "splitmask", "--model", "cpu-tiny", "--batch-size", "8", "--max-steps", "3",
        "--log-every", "1", "--limit-images", "64", "--backend", "tch", "--precision", "bf16",
    ];
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(argv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(out.path().join(trainer::train::run_folder::METRICS_FILE)).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 3);
    // ln(8192) plus InfoNCE's ln(8): about 11, where bf16's neighbours are 0.0625 apart.
    let on_bf16_grid = |x: f64| (x / 0.0625 - (x / 0.0625).round()).abs() < 1e-6;
    assert!(losses.iter().all(|l| l.is_finite() && *l > 5.0), "{losses:?}");
    assert!(
        !losses.iter().all(|&l| on_bf16_grid(l)),
        "losses are kept in f32: {losses:?}"
    );
}
