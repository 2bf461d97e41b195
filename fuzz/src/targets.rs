//! The targets: each parser of untrusted input, its seed corpus from the real files, and how
//! one input reaches it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use pipeline::adapters::{self, AdapterOptions};
use schemas::ShardMetadata;
use serde_json::Value;

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    /// The corpus to start from, made from real files (empty when the shared data is absent).
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Parses one input; an error is fine, a panic or a hang is a bug.
    pub run: fn(&[u8]),
    /// The input (after the selector byte) is a JSON document: mutate its values too.
    pub json: bool,
    /// The first byte picks which file of the layout the rest replaces.
    pub selector: bool,
}

pub static TARGETS: &[Target] = &[
    Target {
        name: "matfile",
        about: "MATLAB v5 reader on the Stanford Cars devkit .mat files",
        seeds: || {
            ["cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat"]
                .iter()
                .filter_map(|f| real(&format!("fixtures/stanford_cars/devkit/{f}")))
                .collect()
        },
        run: |b| {
            let _ = pipeline::matfile::parse_mat(b);
        },
        json: false,
        selector: false,
    },
    Target {
        name: "cars_devkit",
        about: "Stanford Cars adapter on its devkit layout (cars_meta / train / test .mat)",
        seeds: || seeds_of(&CARS_DEVKIT),
        run: |b| run_layout(&CARS_DEVKIT, b),
        json: false,
        selector: true,
    },
    Target {
        name: "cars_csv",
        about: "Stanford Cars adapter on anno_train.csv / anno_test.csv (the real files, cut)",
        seeds: || seeds_of(&CARS_CSV),
        run: |b| run_layout(&CARS_CSV, b),
        json: false,
        selector: true,
    },
    Target {
        name: "coco",
        about: "COCO adapter on instances_{train,val}2017.json (the real files, cut to a few images)",
        seeds: || seeds_of(&COCO),
        run: |b| run_layout(&COCO, b),
        json: true,
        selector: true,
    },
    Target {
        name: "inat",
        about: "iNaturalist adapter on {train,val}2019.json (the real val2019.json, cut)",
        seeds: || seeds_of(&INAT),
        run: |b| run_layout(&INAT, b),
        json: true,
        selector: true,
    },
    Target {
        name: "food101",
        about: "Food-101 adapter on meta/{classes,train,test}.txt",
        seeds: || seeds_of(&FOOD101),
        run: |b| run_layout(&FOOD101, b),
        json: false,
        selector: true,
    },
    Target {
        name: "domainnet",
        about: "DomainNet adapter on clipart_{train,test}.txt (the real lists, cut)",
        seeds: || seeds_of(&DOMAINNET),
        run: |b| run_layout(&DOMAINNET, b),
        json: false,
        selector: true,
    },
    Target {
        name: "imagenet",
        about: "ImageNet adapter on LOC_synset_mapping.txt and LOC_val_solution.csv (flat val/)",
        seeds: || seeds_of(&IMAGENET),
        run: |b| run_layout(&IMAGENET, b),
        json: false,
        selector: true,
    },
    Target {
        name: "shard",
        about: "shard reader (Parquet footer, pages, our columns) on a shard of real JPEGs",
        seeds: shard_seed,
        run: |b| {
            let path = write_scratch("shard.parquet", b);
            if let Ok(reader) = pipeline::shard::ShardReader::open(&path) {
                for row in reader {
                    if row.is_err() {
                        break;
                    }
                }
            }
        },
        json: false,
        selector: false,
    },
    Target {
        name: "image",
        about: "image decode (strict JPEG, other formats), EXIF orientation, crop and resize",
        seeds: image_seeds,
        run: |b| {
            let s = pipeline::transcode::TranscodeSettings {
                max_short_side: Some(48),
                crop_to_bbox: true,
                // Headers claiming huge images are refused before allocation, not decoded.
                max_pixels: 1 << 22,
                ..Default::default()
            };
            let _ = pipeline::transcode::transcode(b, Some([2, 2, 40, 30]), &s);
        },
        json: false,
        selector: false,
    },
    Target {
        name: "vocab",
        about: "vocabulary reader (safetensors header, our metadata, embedding shapes)",
        seeds: vocab_seed,
        run: |b| {
            let path = write_scratch("vocab.safetensors", b);
            let _ = pipeline::vocab::tokenizer::Vocabulary::load(&path);
        },
        json: false,
        selector: false,
    },
    Target {
        name: "manifest",
        about: "a prepared dataset's manifest.json (schema, paths that must stay inside the folder)",
        seeds: manifest_seed,
        run: |b| {
            let path = write_scratch("data/manifest.json", b);
            let _ = pipeline::prepare::load_manifest(path.parent().expect("in a folder"));
        },
        json: true,
        selector: false,
    },
    Target {
        name: "recipe",
        about: "dataset recipes (datasets/*.toml)",
        seeds: || {
            let dir = repo().join("datasets");
            let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            names.sort();
            names.iter().filter_map(|p| std::fs::read(p).ok()).collect()
        },
        run: |b| {
            let path = write_scratch("recipes/x.toml", b);
            let _ = pipeline::recipe::Recipe::load(path.parent().expect("in a folder"), "x");
        },
        json: false,
        selector: false,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// `../shared` beside the repository (`SPLITMASK_SHARED` overrides).
pub fn shared() -> PathBuf {
    schemas::shared_data::root()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn real(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(shared().join(rel)).ok()
}

/// A layout file's real contents (None when the shared data is absent).
pub type RealFile = fn() -> Option<Vec<u8>>;

/// Real file contents by layout path, read once.
type Cache = Mutex<HashMap<&'static str, Option<&'static [u8]>>>;

/// A dataset's folder layout: metadata files (one of which an input replaces), folders and
/// empty placeholder files, and the adapter that lists it.
pub struct Layout {
    pub files: &'static [(&'static str, RealFile)],
    pub dirs: &'static [&'static str],
    pub touch: &'static [&'static str],
    pub adapter: &'static str,
    pub options: fn() -> AdapterOptions,
}

static CARS_DEVKIT: Layout = Layout {
    files: &[
        ("devkit/cars_meta.mat", || {
            real("fixtures/stanford_cars/devkit/cars_meta.mat")
        }),
        ("devkit/cars_train_annos.mat", || {
            real("fixtures/stanford_cars/devkit/cars_train_annos.mat")
        }),
        ("devkit/cars_test_annos.mat", || {
            real("fixtures/stanford_cars/devkit/cars_test_annos.mat")
        }),
    ],
    dirs: &["cars_train", "cars_test"],
    touch: &["cars_train/00001.jpg"],
    adapter: "stanford_cars",
    options: AdapterOptions::default,
};

static CARS_CSV: Layout = Layout {
    files: &[
        ("anno_train.csv", || {
            cut_lines("fixtures/stanford_cars/anno_train.csv", 300)
        }),
        ("anno_test.csv", || {
            cut_lines("fixtures/stanford_cars/anno_test.csv", 100)
        }),
    ],
    dirs: &["cars_train", "cars_test"],
    touch: &["cars_train/00001.jpg"],
    adapter: "stanford_cars",
    options: AdapterOptions::default,
};

static COCO: Layout = Layout {
    files: &[
        ("annotations/instances_train2017.json", || {
            cut_json("data/coco_tiny/annotations/instances_train2017.json", 6)
        }),
        ("annotations/instances_val2017.json", || {
            cut_json("data/coco_tiny/annotations/instances_val2017.json", 6)
        }),
    ],
    dirs: &["train2017", "val2017"],
    touch: &[],
    adapter: "coco",
    options: AdapterOptions::default,
};

static INAT: Layout = Layout {
    files: &[
        ("train2019.json", || cut_json("fixtures/inaturalist/val2019.json", 8)),
        ("val2019.json", || cut_json("fixtures/inaturalist/val2019.json", 5)),
    ],
    dirs: &["train_val2019"],
    touch: &[],
    adapter: "inat",
    options: || AdapterOptions {
        year: Some(2019),
        ..Default::default()
    },
};

static FOOD101: Layout = Layout {
    files: &[
        ("meta/classes.txt", || real("fixtures/food101/meta/classes.txt")),
        ("meta/train.txt", || real("fixtures/food101/meta/train.txt")),
        ("meta/test.txt", || real("fixtures/food101/meta/test.txt")),
    ],
    dirs: &["images/apple_pie"],
    touch: &["images/apple_pie/1005649.jpg"],
    adapter: "food101",
    options: AdapterOptions::default,
};

static DOMAINNET: Layout = Layout {
    files: &[
        ("clipart_train.txt", || {
            cut_lines("fixtures/domainnet/clipart_train.txt", 200)
        }),
        ("clipart_test.txt", || {
            cut_lines("fixtures/domainnet/clipart_test.txt", 100)
        }),
    ],
    dirs: &["clipart/aircraft_carrier"],
    touch: &["clipart/aircraft_carrier/clipart_001_000018.jpg"],
    adapter: "domainnet",
    options: || AdapterOptions {
        domain: Some("clipart".into()),
        ..Default::default()
    },
};

static IMAGENET: Layout = Layout {
    files: &[
        ("LOC_synset_mapping.txt", || {
            real("fixtures/imagenet/LOC_synset_mapping.txt")
        }),
        ("LOC_val_solution.csv", val_solution),
    ],
    dirs: &["train/n01440764", "train/n01443537", "train/n01484850", "val"],
    touch: &[
        "train/n01440764/n01440764_1.JPEG",
        "val/ILSVRC2012_val_00000001.JPEG",
        "val/ILSVRC2012_val_00000002.JPEG",
        "val/ILSVRC2012_val_00000003.JPEG",
    ],
    adapter: "imagenet",
    options: AdapterOptions::default,
};

/// ImageNet's `LOC_val_solution.csv` format (`ImageId,PredictionString` of `wnid x1 y1 x2 y2`
/// boxes) for the first synsets of the real mapping file: the CSV itself is not in ../shared.
fn val_solution() -> Option<Vec<u8>> {
    let synsets = String::from_utf8(real("fixtures/imagenet/LOC_synset_mapping.txt")?).ok()?;
    let wnids: Vec<&str> = synsets
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .take(3)
        .collect();
    let mut csv = String::from("ImageId,PredictionString\n");
    for (i, w) in wnids.iter().enumerate() {
        csv.push_str(&format!(
            "ILSVRC2012_val_{:08},{w} 12 30 200 180 {w} 40 41 90 99 \n",
            i + 1
        ));
    }
    Some(csv.into_bytes())
}

/// A COCO-style json (COCO, iNaturalist) cut to its first `images` images and their
/// annotations, every other key kept, so mutants stay small enough to run by the thousand.
fn cut_json(rel: &str, images: usize) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(&real(rel)?).ok()?;
    let keep: Vec<Value> = v["images"].as_array()?.iter().take(images).cloned().collect();
    let ids: Vec<&Value> = keep.iter().map(|i| &i["id"]).collect();
    let anns: Vec<Value> = v["annotations"]
        .as_array()?
        .iter()
        .filter(|a| ids.contains(&&a["image_id"]))
        .cloned()
        .collect();
    let cats: std::collections::BTreeSet<String> = anns.iter().map(|a| a["category_id"].to_string()).collect();
    let categories: Vec<Value> = v["categories"]
        .as_array()?
        .iter()
        .enumerate()
        .filter(|(i, c)| *i < 10 || cats.contains(&c["id"].to_string()))
        .map(|(_, c)| c.clone())
        .collect();
    v["images"] = Value::Array(keep);
    v["annotations"] = Value::Array(anns);
    v["categories"] = Value::Array(categories);
    serde_json::to_vec(&v).ok()
}

fn cut_lines(rel: &str, n: usize) -> Option<Vec<u8>> {
    let text = String::from_utf8(real(rel)?).ok()?;
    let mut out: String = text.lines().take(n).collect::<Vec<_>>().join("\n");
    out.push('\n');
    Some(out.into_bytes())
}

fn seeds_of(layout: &Layout) -> Vec<Vec<u8>> {
    layout
        .files
        .iter()
        .enumerate()
        .filter_map(|(i, (_, f))| {
            let mut seed = vec![i as u8];
            seed.extend(f()?);
            Some(seed)
        })
        .collect()
}

/// A layout file's real contents, read (and cut) once per process.
fn cached(rel: &'static str, f: RealFile) -> Option<&'static [u8]> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut map = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *map.entry(rel)
        .or_insert_with(|| f().map(|b| &*Box::leak(b.into_boxed_slice())))
}

/// This thread's scratch folder (a parser's files are rewritten for every input).
fn scratch() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("a temp folder");
    }
    DIR.with(|d| d.path().to_path_buf())
}

fn write_scratch(rel: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("scratch folder");
    }
    std::fs::write(&path, bytes).expect("scratch file");
    path
}

/// Writes the layout with the file the selector byte picks replaced by the rest of the input,
/// and lists it with the layout's adapter.
fn run_layout(layout: &Layout, input: &[u8]) {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    let root = scratch().join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in layout.dirs {
        std::fs::create_dir_all(root.join(d)).expect("scratch folder");
    }
    for t in layout.touch {
        std::fs::write(root.join(t), b"").expect("scratch file");
    }
    let pick = selector as usize % layout.files.len();
    for (i, (rel, real)) in layout.files.iter().enumerate() {
        let bytes = if i == pick {
            body
        } else {
            match cached(rel, *real) {
                Some(b) => b,
                None => continue,
            }
        };
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("in a folder")).expect("scratch folder");
        std::fs::write(&path, bytes).expect("scratch file");
    }
    let _ = adapters::list(layout.adapter, &root, &(layout.options)());
}

/// A shard as `pipeline prepare` writes it: three real JPEGs, small row groups (so the footer
/// lists several), optional columns set on one row.
fn shard_seed() -> Vec<Vec<u8>> {
    let jpegs: Vec<Vec<u8>> = ["image02206.jpg", "image01551.jpg", "image01713.jpg"]
        .iter()
        .filter_map(|f| real(&format!("fixtures/jpeg_edge_cases/invalid/{f}")))
        .collect();
    if jpegs.len() < 3 {
        return Vec::new();
    }
    let dir = tempfile::tempdir().expect("a temp folder");
    let path = dir.path().join("seed.parquet");
    let meta = ShardMetadata {
        schema_version: schemas::SCHEMA_VERSION,
        dataset: "fuzz".into(),
        split: "train".into(),
        class_names: vec!["a".into(), "b".into()],
    };
    let mut w = pipeline::shard::ShardWriter::create(&path, &meta, 20_000).expect("seed shard");
    let rows: Vec<pipeline::shard::Row> = jpegs
        .into_iter()
        .enumerate()
        .map(|(i, image)| pipeline::shard::Row {
            id: format!("img{i}"),
            split: "train".into(),
            label: i as i32 % 2,
            image,
            path: format!("a/img{i}.jpg"),
            width: 64,
            height: 48,
            bbox: (i == 1).then_some([1, 2, 30, 40]),
            coco_id: (i == 2).then_some(7),
            domain: (i == 0).then(|| "clipart".into()),
            mask: None,
            mask_path: None,
        })
        .collect();
    for r in rows.chunks(1) {
        w.write(r).expect("seed shard");
    }
    w.finish().expect("seed shard");
    vec![std::fs::read(&path).expect("seed shard")]
}

fn image_seeds() -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for dir in [
        shared().join("fixtures/jpeg_edge_cases/invalid"),
        shared().join("fixtures/jpeg_edge_cases/orientation"),
        repo().join("pipeline/tests/fixtures"),
    ] {
        if let Ok(d) = std::fs::read_dir(&dir) {
            files.extend(d.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    files.push(shared().join("fixtures/jpeg_edge_cases/corrupted.jpg"));
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// A small random-projection vocabulary as `pipeline vocab build` saves it.
fn vocab_seed() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("a temp folder");
    let cfg = pipeline::vocab::VocabConfig {
        kind: schemas::VocabKind::RandomProjection,
        size: 16,
        seed: 0,
        sample: 0,
        iterations: 0,
        progress: false,
    };
    let path = dir.path().join("v.safetensors");
    pipeline::vocab::build(dir.path(), &cfg)
        .and_then(|v| v.save(&path))
        .expect("seed vocabulary");
    vec![std::fs::read(&path).expect("seed vocabulary")]
}

/// A manifest as `prepare` writes it: shards, a token set, splits and a skip.
fn manifest_seed() -> Vec<Vec<u8>> {
    let text = r#"{"schema_version": 2, "pipeline_version": "0.1.0", "dataset": "imagenette",
        "adapter": "imagenet", "source": "../shared/data/imagenette", "settings": {},
        "class_names": ["tench", "English springer"], "eval_split": "val",
        "splits": {"train": {"images": 2, "skipped": 1, "per_class": {"0": 1, "1": 1}},
                   "val": {"images": 1, "skipped": 0, "per_class": {"1": 1}}},
        "shards": [{"file": "train-00000-of-00001.parquet", "split": "train", "rows": 2, "bytes": 10, "sha256": "ab"},
                   {"file": "val-00000-of-00001.parquet", "split": "val", "rows": 1, "bytes": 9, "sha256": "cd"}],
        "side_tables": [],
        "skipped": [{"path": "train/n01440764/x.JPEG", "split": "train", "reason": "corrupt JPEG data"}],
        "wall_time_s": 1.5,
        "tokens": [{"vocab": "vocab-random_projection-8192-s0.safetensors", "vocab_sha256": "ef",
                    "dir": "tokens-vocab-random_projection-8192-s0",
                    "shards": [{"file": "train-00000-of-00001.parquet", "image_sha256": "ab", "rows": 2, "bytes": 4, "sha256": "01"}]}]}"#;
    vec![text.as_bytes().to_vec()]
}
