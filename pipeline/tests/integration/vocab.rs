//! Vocabularies and the pre-tokenized corpus end to end on the real Imagenette.

use std::collections::BTreeMap;

use crate::common::*;
use pipeline::prepare::load_manifest;
use pipeline::shard::ShardReader;
use pipeline::transcode::decode_upright;
use pipeline::vocab::tokenize::{read_token_shard, tokenize_dataset, tokenize_shards};
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

/// `tokenize` as a job array of 3 workers, then the merge, gives the one-process token set
/// byte for byte, and the merge keeps every worker's shard as it is.
#[test]
fn tokenize_as_a_job_array_then_merge_equals_one_process() {
    let (Some(root), Some(synsets)) = (
        shared("data/imagenette"),
        shared("fixtures/imagenet/LOC_synset_mapping.txt"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // 3 classes x (16 train + 6 val) real photos in Imagenette's layout, linked.
    let source = tmp.path().join("source");
    for split in ["train", "val"] {
        let classes = std::fs::read_dir(root.join(split)).unwrap().map(|e| e.unwrap().path());
        let mut classes: Vec<_> = classes.collect();
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
    let one = tmp.path().join("one");
    let mut cfg = config("imagenet", &source, &one);
    cfg.dataset = "imagenette".into();
    cfg.options = pipeline::adapters::AdapterOptions {
        synsets: Some(synsets),
        ..Default::default()
    };
    cfg.transcode.max_short_side = Some(64);
    cfg.shard_bytes = 40_000;
    let m = run(&cfg);
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
