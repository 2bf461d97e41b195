//! Vocabularies and the pre-tokenized corpus end to end on the real Imagenette.

use std::collections::BTreeMap;

use crate::common::*;
use pipeline::prepare::load_manifest;
use pipeline::shard::ShardReader;
use pipeline::transcode::decode_upright;
use pipeline::vocab::token_shards::{read_token_shard, tokenize_dataset, tokenize_shards};
use pipeline::vocab::tokenizer::Vocabulary;
use pipeline::vocab::{self, VocabConfig};
use schemas::VocabKind;

#[test]
fn imagenette_three_vocabularies_and_token_grids_for_every_image() {
    let Some(dir) = imagenette() else { return };
    let kinds = [VocabKind::RandomProjection, VocabKind::RandomPatches, VocabKind::Kmeans];
    let mut usage = BTreeMap::new();
    for kind in kinds {
        let cfg = VocabConfig {
            kind,
            size: 256,
            seed: 1,
            sample: 50_000,
            iterations: 8,
            progress: false,
        };
        let v = vocab::build(dir, &cfg).unwrap();
        if let Some(k) = &v.header.kmeans {
            assert_eq!(k.sample, 50_000);
            assert!(
                k.inertia.windows(2).all(|w| w[1] <= w[0] * (1.0 + 1e-9)),
                "{:?}",
                k.inertia
            );
        }
        let path = dir.join(cfg.file_name());
        let sha = v.save(&path).unwrap();
        let set = tokenize_dataset(dir, &path, false).unwrap();
        assert_eq!(set.vocab_sha256, sha);

        let m = load_manifest(dir).unwrap();
        assert_eq!(m.tokens.iter().find(|t| t.dir == set.dir), Some(&set));
        assert_eq!(set.shards.len(), m.shards.len());
        let (v, _) = Vocabulary::load(&path).unwrap();
        for (img_shard, tok_shard) in m.shards.iter().zip(&set.shards) {
            assert_eq!(
                (&tok_shard.file, &tok_shard.image_sha256),
                (&img_shard.file, &img_shard.sha256)
            );
            let toks = read_token_shard(&dir.join(&set.dir).join(&tok_shard.file)).unwrap();
            let images: Vec<_> = ShardReader::open(&dir.join(&img_shard.file))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(toks.len(), images.len());
            assert!(
                toks.iter().zip(&images).all(|(t, i)| t.id == i.id),
                "aligned ids and order"
            );
            assert!(toks
                .iter()
                .all(|t| t.tokens.len() == 196 && t.tokens.iter().all(|&x| (x as usize) < 256)));
            let flipped_differs = toks.iter().filter(|t| t.tokens != t.tokens_flip).count();
            assert!(
                flipped_differs * 10 > toks.len() * 9,
                "{flipped_differs} of {}",
                toks.len()
            );
            // The stored grids are the canonical view's tokens (the trainer's oracle).
            for (t, img) in toks.iter().zip(&images).step_by(97) {
                let views = v.canonical_views(&decode_upright(&img.image).unwrap().0);
                let again = v.tokenize_views(&views);
                assert_eq!(&again[..196], &t.tokens[..]);
                assert_eq!(&again[196..], &t.tokens_flip[..]);
            }
        }
        let r = vocab::usage(dir, &v, "val", 1000).unwrap();
        eprintln!(
            "{}: {} val images, perplexity {:.1}, dead {:.1}%",
            kind.name(),
            r.images,
            r.perplexity,
            100.0 * r.dead_share
        );
        usage.insert(kind.name(), r);

        // A second run keeps every token shard as it is.
        let mtimes = || -> Vec<_> {
            let file = |s: &schemas::TokenShard| dir.join(&set.dir).join(&s.file);
            set.shards
                .iter()
                .map(|s| std::fs::metadata(file(s)).unwrap().modified().unwrap())
                .collect()
        };
        let before = mtimes();
        assert_eq!(tokenize_dataset(dir, &path, false).unwrap(), set);
        assert_eq!(mtimes(), before);
    }
    // k-means uses most of its entries; all three vocabularies are used well beyond a handful.
    assert!(usage["kmeans"].dead_share < 0.1, "{:?}", usage["kmeans"].dead_share);
    assert!(usage.values().all(|r| r.perplexity > 20.0));
    assert!(usage["kmeans"].perplexity > usage["random_projection"].perplexity);
    let png = dir.join("kmeans.png");
    let (v, _) = Vocabulary::load(&dir.join("vocab-kmeans-256-s1.safetensors")).unwrap();
    vocab::draw(&v, &png, 32, 2).unwrap();
    assert_eq!(image::image_dimensions(&png).unwrap(), (32 * 17, 8 * 17));
    assert_eq!(load_manifest(dir).unwrap().tokens.len(), 3);
}

/// 3 classes x (16 train + 6 val) real Imagenette photos, prepared at 64 px into `<tmp>/one`
/// in shards of a few images; None without shared data.
fn small_imagenette(tmp: &std::path::Path) -> Option<(std::path::PathBuf, schemas::Manifest)> {
    let root = shared("data/imagenette")?;
    let synsets = shared("fixtures/imagenet/LOC_synset_mapping.txt")?;
    let source = tmp.join("source");
    for split in ["train", "val"] {
        let mut classes: Vec<_> = std::fs::read_dir(root.join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        classes.sort();
        for class in classes.iter().take(3) {
            let dest = source.join(split).join(class.file_name().unwrap());
            std::fs::create_dir_all(&dest).unwrap();
            let mut files: Vec<_> = std::fs::read_dir(class).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files.iter().take(if split == "train" { 16 } else { 6 }) {
                std::os::unix::fs::symlink(f, dest.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    let one = tmp.join("one");
    let mut cfg = config("imagenet", &source, &one);
    cfg.dataset = "imagenette".into();
    cfg.options = pipeline::adapters::AdapterOptions {
        synsets: Some(synsets),
        ..Default::default()
    };
    cfg.transcode.max_short_side = Some(64);
    cfg.shard_bytes = 40_000;
    let m = run(&cfg);
    Some((one, m))
}

/// `tokenize` as a job array of 3 workers, then the merge, gives the one-process token set
/// byte for byte, and the merge keeps every worker's shard as it is.
#[test]
fn tokenize_as_a_job_array_then_merge_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((one, m)) = small_imagenette(tmp.path()) else {
        return;
    };
    assert!(m.shards.len() >= 4, "{} shards", m.shards.len());
    // The array's folder: the same shards and manifest.
    let array = tmp.path().join("array");
    std::fs::create_dir(&array).unwrap();
    for f in std::iter::once("manifest.json".to_string()).chain(m.shards.iter().map(|s| s.file.clone())) {
        std::fs::copy(one.join(&f), array.join(&f)).unwrap();
    }
    let vc = VocabConfig {
        kind: VocabKind::RandomProjection,
        size: 64,
        seed: 3,
        sample: 0,
        iterations: 0,
        progress: false,
    };
    let v = vocab::build(&one, &vc).unwrap();
    for dir in [&one, &array] {
        v.save(&dir.join(vc.file_name())).unwrap();
    }
    let whole = tokenize_dataset(&one, &one.join(vc.file_name()), false).unwrap();

    let path = array.join(vc.file_name());
    let mut parts = Vec::new();
    for index in 0..3 {
        let w = pipeline::prepare::Worker { count: 3, index };
        let part = tokenize_shards(&array, &path, w, false).unwrap();
        assert!(part.shards.iter().all(|t| {
            let k = m.shards.iter().position(|s| s.file == t.file).unwrap();
            k % 3 == index
        }));
        parts.extend(part.shards);
    }
    assert_eq!(parts.len(), m.shards.len());
    assert!(
        load_manifest(&array).unwrap().tokens.is_empty(),
        "workers leave the manifest alone"
    );
    let mtimes = || -> Vec<_> {
        parts
            .iter()
            .map(|s| {
                std::fs::metadata(array.join(&whole.dir).join(&s.file))
                    .unwrap()
                    .modified()
                    .unwrap()
            })
            .collect()
    };
    let before = mtimes();
    let merged = tokenize_dataset(&array, &path, false).unwrap();
    assert_eq!(merged, whole);
    assert_eq!(mtimes(), before, "the merge keeps the workers' shards");
    assert_eq!(load_manifest(&array).unwrap().tokens, vec![whole.clone()]);
    // A worker's shard for another vocabulary, or a damaged one, is redone by the merge.
    let other = array.join(&whole.dir).join(&m.shards[1].file);
    let mut bytes = std::fs::read(&other).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&other, &bytes).unwrap();
    let mut manifest = load_manifest(&array).unwrap();
    manifest.tokens.clear();
    std::fs::write(array.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert_eq!(tokenize_dataset(&array, &path, false).unwrap(), whole);
    // A worker index past the count is refused.
    let bad = pipeline::prepare::Worker { count: 2, index: 2 };
    let err = tokenize_shards(&array, &path, bad, false).unwrap_err().to_string();
    assert!(err.contains("worker index 2"), "{err}");
}

/// `vocab build` (k-means) as a job array of 2 workers sampling patches, then the merge, gives
/// the one-process vocabulary exactly, and the merge reads the workers' patches as they are.
#[test]
fn vocab_build_as_a_job_array_then_merge_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((dir, m)) = small_imagenette(tmp.path()) else {
        return;
    };
    let cfg = VocabConfig {
        kind: VocabKind::Kmeans,
        size: 32,
        seed: 2,
        sample: 5_000,
        iterations: 4,
        progress: false,
    };
    let whole = vocab::build(&dir, &cfg).unwrap();
    let patches = tmp.path().join("vocab.patches");
    let files = |index: usize, count: usize| vocab::BuildFiles {
        kmeans_state: None,
        patches: Some(&patches),
        worker: pipeline::prepare::Worker { count, index },
    };
    for index in 0..2 {
        assert!(vocab::build_with(&dir, &cfg, &files(index, 2)).unwrap().is_none());
    }
    let train: Vec<_> = m.shards.iter().filter(|s| s.split == "train").collect();
    assert!(train.len() >= 2, "{} train shards", train.len());
    let written: Vec<_> = std::fs::read_dir(&patches)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(written.len(), train.len(), "one patch file per train shard");
    let mtimes = || -> Vec<_> {
        let mut t: Vec<_> = written
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
            .collect();
        t.sort();
        t
    };
    let before = mtimes();
    let merged = vocab::build_with(&dir, &cfg, &files(0, 1)).unwrap().unwrap();
    assert_eq!(merged.header, whole.header);
    assert_eq!(merged.embeddings, whole.embeddings);
    assert_eq!(mtimes(), before, "the merge reads the workers' patches");
    // Patches sampled for other settings are not reused: another seed resamples.
    let other = VocabConfig { seed: 3, ..cfg.clone() };
    let again = vocab::build_with(&dir, &other, &files(0, 1)).unwrap().unwrap();
    assert_eq!(again.embeddings, vocab::build(&dir, &other).unwrap().embeddings);
    assert_ne!(mtimes(), before);
    // Cleaning the store removes what it wrote; a file of someone else's in it stays, and so
    // does the folder then.
    std::fs::write(patches.join("notes.txt"), "mine").unwrap();
    vocab::remove_patch_store(&patches, &dir).unwrap();
    let left: Vec<_> = std::fs::read_dir(&patches)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);
    std::fs::remove_file(patches.join("notes.txt")).unwrap();
    vocab::remove_patch_store(&patches, &dir).unwrap();
    assert!(!patches.exists(), "an empty store's folder is removed");
}
