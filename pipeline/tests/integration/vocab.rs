//! Vocabularies and the pre-tokenized corpus end to end on the real Imagenette.

use std::collections::BTreeMap;

use crate::common::*;
use pipeline::prepare::load_manifest;
use pipeline::shard::ShardReader;
use pipeline::transcode::decode_upright;
use pipeline::vocab::tokenize::{read_token_shard, tokenize_dataset};
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
