use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use pipeline::adapters::AdapterOptions;
use pipeline::prepare::{prepare, PrepareConfig, Worker};
use pipeline::shard::{Row, ShardReader};
use pipeline::transcode::{encode_jpeg, TranscodeSettings};
use schemas::Manifest;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `../shared/<rel>`, or None (with a message) where shared data is absent.
pub fn shared(rel: &str) -> Option<PathBuf> {
    schemas::shared_data::find(rel)
}

/// A small valid JPEG whose pixels depend on `seed`.
pub fn tiny_jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([seed, (x * 9) as u8, (y * 13) as u8]));
    encode_jpeg(&img, 85).unwrap()
}

pub fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

pub fn config(adapter: &str, source: &Path, out: &Path) -> PrepareConfig {
    PrepareConfig {
        dataset: adapter.to_string(),
        adapter: adapter.to_string(),
        source: source.to_path_buf(),
        out_dir: out.to_path_buf(),
        options: AdapterOptions::default(),
        transcode: TranscodeSettings::default(),
        subset: None,
        eval_split: "val".into(),
        holdout: None,
        shard_bytes: 256_000_000,
        row_group_bytes: 64_000_000,
    }
}

pub fn run(cfg: &PrepareConfig) -> Manifest {
    prepare(cfg, Worker::ALL, false).unwrap().manifest.unwrap()
}

pub fn rows(dir: &Path, m: &Manifest) -> Vec<Row> {
    m.shards
        .iter()
        .flat_map(|s| ShardReader::open(&dir.join(&s.file)).unwrap().map(|r| r.unwrap()))
        .collect()
}

/// The Python the Makefile installed the test clients into (`$PYTHON`, else `python3`).
pub fn python() -> Command {
    Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// (id, split, label, width, height) of every row, read by pyarrow (not our reader).
pub fn pyarrow_rows(dir: &Path) -> Vec<(String, String, i64, i64, i64)> {
    let script = workspace().join("tests/read_shards.py");
    let out = python().arg(&script).arg(dir).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "pyarrow reader failed (`make python-deps` installs pyarrow): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Mean absolute difference of two images after scaling both to 32x32.
pub fn image_distance(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let f = image::imageops::FilterType::Triangle;
    let a = image::imageops::resize(a, 32, 32, f);
    let b = image::imageops::resize(b, 32, 32, f);
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as i64 - *y as i64).unsigned_abs())
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// The real Imagenette prepared once per test run (under target/tmp, so a rerun resumes it),
/// shared by the tests that read it; None where shared data is absent.
pub fn imagenette() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = shared("data/imagenette")?;
        let synsets = shared("fixtures/imagenet/LOC_synset_mapping.txt")?;
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("imagenette-prepared");
        let mut cfg = config("imagenet", &root, &out);
        cfg.dataset = "imagenette".into();
        cfg.options = AdapterOptions {
            synsets: Some(synsets),
            ..Default::default()
        };
        run(&cfg);
        Some(out)
    })
    .as_deref()
}
