//! `trainer embed` on a short pre-training run: one row per val image, features equal to
//! `trainer eval`'s, parts kept on a rerun, another configuration's part refused.

use std::collections::BTreeMap;

use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use trainer::data::images::ImageSet;
use trainer::eval::features::{features, Pass};
use trainer::export::embed::{embed, EmbedSpec};
use trainer::model::vit::Pool;
use trainer::train::encoder_from_run::run_encoder;
use trainer::CpuBackend;

use crate::{args, fixture, micro_vit, run};

/// `id -> (cls, mean)` of every part in `dir`.
fn read_parts(dir: &std::path::Path) -> BTreeMap<String, (Vec<f32>, Vec<f32>)> {
    let mut out = BTreeMap::new();
    let mut parts: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    parts.sort();
    for p in parts {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let ids = b
                .column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let list = |name: &str| {
                b.column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>()
                    .unwrap()
                    .clone()
            };
            let (cls, mean) = (list("cls"), list("mean"));
            for i in 0..b.num_rows() {
                let row = |l: &FixedSizeListArray| {
                    l.value(i)
                        .as_any()
                        .downcast_ref::<Float32Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                };
                out.insert(ids.value(i).to_string(), (row(&cls), row(&mean)));
            }
        }
    }
    out
}

#[test]
fn embeddings_cover_the_split_and_equal_evals_features() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("pre");
    let extra = [
        "--model",
        "cpu-tiny",
        "--batch-size",
        "16",
        "--max-steps",
        "4",
        "--limit-images",
        "128",
    ];
    let mut cfg = args(f, &f.vocab_small, &run_dir, &extra).resolve().unwrap();
    cfg.vit = micro_vit();
    run(&cfg, false);

    let device = Default::default();
    let (_, encoder) = run_encoder::<CpuBackend>(&run_dir, &device).unwrap();
    let set = ImageSet::load(&f.dir, "val").unwrap();
    let spec = EmbedSpec {
        source: run_dir.display().to_string(),
        split: "val".into(),
        layer: None,
        image_size: cfg.vit.image_size,
        crop_ratio: 0.875,
        batch: 64,
    };
    let out = tmp.path().join("emb");
    let s = embed(&encoder, &set, &spec, &out, &device).unwrap();
    assert_eq!((s.rows, s.kept_parts), (set.samples.len(), 0));
    let rows = read_parts(&out);
    assert_eq!(rows.len(), set.samples.len(), "one row per image, ids unique");

    // The mean column, L2-normalized, is trainer eval's k-NN feature of the same image.
    let indices: Vec<usize> = (0..48).collect();
    let pass = Pass {
        set: &set,
        indices: &indices,
        image_size: cfg.vit.image_size,
        crop_ratio: 0.875,
        batch: 16,
        what: "x",
    };
    let (feats, _) = features(&encoder, pass, Pool::MeanPatches, &device).unwrap();
    let d = encoder.dim();
    for (k, &i) in indices.iter().enumerate() {
        let (cls, mean) = &rows[&set.samples[i].id];
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
        for j in 0..d {
            assert!(
                (mean[j] / norm - feats[k * d + j]).abs() < 1e-5,
                "image {i} feature {j}"
            );
        }
        assert_ne!(cls, mean);
    }

    // Through the command, resumed: every part kept. Another layer into the same folder is
    // refused, naming the part.
    let cmd = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(["--quiet", "embed", "--run"])
            .arg(&run_dir)
            .args(["--split", "val", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = cmd(&["--batch-size", "64"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 kept from an earlier run"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = cmd(&["--batch-size", "64", "--layer", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("part-00000.parquet") && err.contains("another encoder"),
        "{err}"
    );
    // A part past the split's last (a larger split's run in the same folder) is refused too.
    std::fs::copy(out.join("part-00000.parquet"), out.join("part-00001.parquet")).unwrap();
    let err = embed(&encoder, &set, &spec, &out, &device).unwrap_err().to_string();
    assert!(
        err.contains("part-00001.parquet") && err.contains("past the 1"),
        "{err}"
    );
}
