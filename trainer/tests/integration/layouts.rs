//! The paper's datasets in their native layouts, built in temp dirs from their real metadata in
//! `../shared/fixtures` (trimmed to a few hundred entries, names and labels unchanged) with
//! real Imagenette JPEGs under the listed file names: a dataset class `c` gets photos of
//! Imagenette class `c % 10`, train names from Imagenette's train split and test names from its
//! val split, so labels stay learnable and no photo is in both splits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pipeline::matfile::{read_variable, MatValue};

use crate::shared;

#[path = "../../../tests/matwriter.rs"]
mod matwriter;
use matwriter::{write_struct_array, Field};

/// Imagenette's JPEGs per class (sorted), for its train and val splits.
struct Photos {
    train: Vec<Vec<PathBuf>>,
    val: Vec<Vec<PathBuf>>,
}

fn photos() -> Option<&'static Photos> {
    static P: OnceLock<Option<Photos>> = OnceLock::new();
    P.get_or_init(|| {
        let root = shared("data/imagenette")?;
        let split = |name: &str| -> Vec<Vec<PathBuf>> {
            let mut classes: Vec<PathBuf> = std::fs::read_dir(root.join(name))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            classes.sort();
            classes
                .iter()
                .map(|c| {
                    let mut files: Vec<PathBuf> = std::fs::read_dir(c).unwrap().map(|e| e.unwrap().path()).collect();
                    files.sort();
                    files
                })
                .collect()
        };
        Some(Photos {
            train: split("train"),
            val: split("val"),
        })
    })
    .as_ref()
}

/// Copies a photo for the `k`-th image of dataset class `class` to `dest`.
struct Filler {
    used: BTreeMap<(bool, usize), usize>,
}

impl Filler {
    fn new() -> Self {
        Filler { used: BTreeMap::new() }
    }

    fn put(&mut self, train: bool, class: usize, dest: &Path) {
        let p = photos().expect("checked by the caller");
        let pool = if train { &p.train } else { &p.val };
        let files = &pool[class % pool.len()];
        let k = self.used.entry((train, class % pool.len())).or_insert(0);
        let src = &files[*k % files.len()];
        *k += 1;
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(src, dest).unwrap();
    }
}

/// The first `per_class` lines of each class of a list, in file order.
fn first_per_class(lines: &[String], class: impl Fn(&str) -> String, per_class: usize) -> Vec<&String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    lines
        .iter()
        .filter(|l| {
            let n = seen.entry(class(l)).or_insert(0);
            *n += 1;
            *n <= per_class
        })
        .collect()
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Food-101: `meta/{classes,train,test}.txt` (10 classes) and `images/<class>/<id>.jpg`.
/// Returns (train, test) image counts.
pub fn food101(root: &Path, train_per_class: usize, test_per_class: usize) -> Option<(usize, usize)> {
    let meta = shared("fixtures/food101/meta")?;
    photos()?;
    std::fs::create_dir_all(root.join("meta")).unwrap();
    std::fs::copy(meta.join("classes.txt"), root.join("meta/classes.txt")).unwrap();
    let classes = read_lines(&meta.join("classes.txt"));
    let mut filler = Filler::new();
    let mut counts = (0, 0);
    for (split, per_class) in [("train", train_per_class), ("test", test_per_class)] {
        let lines = read_lines(&meta.join(format!("{split}.txt")));
        let kept = first_per_class(&lines, |l| l.split('/').next().unwrap().to_string(), per_class);
        let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(root.join(format!("meta/{split}.txt")), text).unwrap();
        for l in &kept {
            let class = classes.iter().position(|c| *c == l.split('/').next().unwrap()).unwrap();
            filler.put(split == "train", class, &root.join(format!("images/{l}.jpg")));
        }
        if split == "train" {
            counts.0 = kept.len();
        } else {
            counts.1 = kept.len();
        }
    }
    Some(counts)
}

/// DomainNet: `<domain>_{train,test}.txt` (the first `classes` classes) and
/// `<domain>/<class>/<file>.jpg`. Returns (train, test) image counts.
pub fn domainnet(
    root: &Path,
    domain: &str,
    classes: usize,
    train_per_class: usize,
    test_per_class: usize,
) -> Option<(usize, usize)> {
    let lists = shared("fixtures/domainnet")?;
    photos()?;
    let mut filler = Filler::new();
    let mut counts = (0, 0);
    for (split, per_class) in [("train", train_per_class), ("test", test_per_class)] {
        let lines = read_lines(&lists.join(format!("{domain}_{split}.txt")));
        let label = |l: &str| -> usize { l.rsplit_once(' ').unwrap().1.parse().unwrap() };
        let in_classes: Vec<String> = lines.into_iter().filter(|l| label(l) < classes).collect();
        let kept = first_per_class(&in_classes, |l| label(l).to_string(), per_class);
        let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join(format!("{domain}_{split}.txt")), text).unwrap();
        for l in &kept {
            let rel = l.rsplit_once(' ').unwrap().0;
            filler.put(split == "train", label(l), &root.join(rel));
        }
        if split == "train" {
            counts.0 = kept.len();
        } else {
            counts.1 = kept.len();
        }
    }
    Some(counts)
}

/// Stanford Cars in the devkit form: the real `cars_meta.mat`, the first `train_rows` rows of
/// the real `cars_train_annos.mat`, and `cars_test_annos_withlabels.mat` written from the first
/// `test_rows` rows of the real `cars_test_annos.mat` with their classes from the real
/// `anno_test.csv` (the devkit's own test file carries no classes). Returns (train, test).
pub fn cars_devkit(root: &Path, train_rows: usize, test_rows: usize) -> Option<(usize, usize)> {
    let fixtures = shared("fixtures/stanford_cars")?;
    photos()?;
    let devkit = root.join("devkit");
    std::fs::create_dir_all(&devkit).unwrap();
    std::fs::copy(fixtures.join("devkit/cars_meta.mat"), devkit.join("cars_meta.mat")).unwrap();
    let rows = |path: &Path| -> Vec<BTreeMap<String, MatValue>> {
        match read_variable(path, "annotations").unwrap() {
            MatValue::Struct { elements, .. } => elements,
            other => panic!("{}: {other:?}", path.display()),
        }
    };
    let test_labels: BTreeMap<String, f64> = read_lines(&fixtures.join("anno_test.csv"))
        .iter()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[5].parse().unwrap())
        })
        .collect();
    let fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"];
    let mut filler = Filler::new();
    let mut write = |src: &Path, dest: &Path, dir: &str, n: usize, train: bool| -> usize {
        let kept: Vec<Vec<Field>> = rows(src)
            .into_iter()
            .take(n)
            .map(|el| {
                let fname = el["fname"].as_str().unwrap().to_string();
                let class = match el.get("class") {
                    Some(c) => c.scalar().unwrap(),
                    None => test_labels[&fname],
                };
                filler.put(train, class as usize - 1, &root.join(dir).join(&fname));
                let num = |f: &str| Field::Num(el[f].scalar().unwrap());
                vec![
                    num("bbox_x1"),
                    num("bbox_y1"),
                    num("bbox_x2"),
                    num("bbox_y2"),
                    Field::Num(class),
                    Field::Str(fname),
                ]
            })
            .collect();
        write_struct_array(dest, "annotations", &fields, &kept);
        kept.len()
    };
    let train = write(
        &fixtures.join("devkit/cars_train_annos.mat"),
        &devkit.join("cars_train_annos.mat"),
        "cars_train",
        train_rows,
        true,
    );
    let test = write(
        &fixtures.join("devkit/cars_test_annos.mat"),
        &root.join("cars_test_annos_withlabels.mat"),
        "cars_test",
        test_rows,
        false,
    );
    Some((train, test))
}
