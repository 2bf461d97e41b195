//! Each adapter on its official layout, built in a temp dir from the real metadata files with
//! small JPEGs written under the file names the metadata lists.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use pipeline::adapters::{self, AdapterOptions};
use pipeline::matfile::{read_variable, MatValue};
use pipeline::prepare::{PrepareConfig, Subset};

fn copy(src: &Path, dst: &Path) {
    write_file(dst, &std::fs::read(src).unwrap());
}

/// The real Stanford Cars devkit `.mat` files under `<root>/devkit`.
fn copy_devkit(fx: &Path, root: &Path) {
    for f in ["cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat"] {
        copy(&fx.join("devkit").join(f), &root.join("devkit").join(f));
    }
}

#[test]
fn stanford_cars_devkit_and_csv_agree() {
    let Some(fx) = shared("fixtures/stanford_cars") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cars");
    copy_devkit(&fx, &root);
    let jpeg = tiny_jpeg(40, 30, 1);
    let mut csv_rows: BTreeMap<String, (i32, [i32; 4])> = BTreeMap::new();
    for (split, dir) in [("train", "cars_train"), ("test", "cars_test")] {
        let mut rdr = csv::Reader::from_path(fx.join(format!("anno_{split}.csv"))).unwrap();
        for r in rdr.records() {
            let r = r.unwrap();
            let v: Vec<i32> = (1..6).map(|i| r[i].parse().unwrap()).collect();
            write_file(&root.join(dir).join(&r[0]), &jpeg);
            csv_rows.insert(format!("{dir}/{}", &r[0]), (v[4] - 1, [v[0], v[1], v[2], v[3]]));
        }
    }
    let out = tmp.path().join("out");
    let m = run(&config("stanford_cars", &root, &out));
    assert_eq!(m.splits["train"].images, 8144);
    assert_eq!(m.splits["test"].images, 8041);
    assert_eq!(m.class_names.len(), 196);
    assert_eq!(m.class_names[0], "AM General Hummer SUV 2000");
    assert_eq!(m.class_names[195], "smart fortwo Convertible 2012");
    assert_eq!(m.splits["train"].per_class.len(), 196);
    assert_eq!(
        m.splits["test"].per_class.keys().collect::<Vec<_>>(),
        vec!["-1"],
        "devkit test annos are unlabeled"
    );
    let rows = rows(&out, &m);
    for r in rows.iter().filter(|r| r.split == "train") {
        let (label, bbox) = csv_rows[&r.id];
        assert_eq!((r.label, r.bbox), (label, Some(bbox)), "{}", r.id);
    }

    // The CSV form of the same data gives the same train rows, and labeled test rows.
    let csv_root = tmp.path().join("cars_csv");
    std::fs::create_dir_all(&csv_root).unwrap();
    for f in ["anno_train.csv", "anno_test.csv"] {
        copy(&fx.join(f), &csv_root.join(f));
    }
    std::fs::rename(root.join("cars_train"), csv_root.join("cars_train")).unwrap();
    std::fs::rename(root.join("cars_test"), csv_root.join("cars_test")).unwrap();
    let l = adapters::list("stanford_cars", &csv_root, &AdapterOptions::default()).unwrap();
    assert_eq!(l.images.len(), 8144 + 8041);
    for img in &l.images {
        assert_eq!((img.label, img.bbox.unwrap()), csv_rows[&img.rel_path]);
    }
}

/// Cars with only its train images at hand: the test split is listed as empty (every image
/// skipped, with the reason) and writes no shard, and a rerun resumes to the same manifest.
#[test]
fn an_empty_split_writes_no_shard() {
    let Some(fx) = shared("fixtures/stanford_cars") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cars");
    copy_devkit(&fx, &root);
    let jpeg = tiny_jpeg(40, 30, 1);
    let mut rdr = csv::Reader::from_path(fx.join("anno_train.csv")).unwrap();
    for r in rdr.records() {
        write_file(&root.join("cars_train").join(&r.unwrap()[0]), &jpeg);
    }
    let out = tmp.path().join("out");
    let cfg = config("stanford_cars", &root, &out);
    let first = pipeline::prepare::prepare(&cfg, pipeline::prepare::Worker::ALL, false).unwrap();
    let m = first.manifest.unwrap();
    assert_eq!(m.splits["train"].images, 8144);
    let test = &m.splits["test"];
    assert_eq!((test.images, test.skipped), (0, 8041));
    assert!(m.shards.iter().all(|s| s.split == "train"), "{:?}", m.shards);
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".parquet"))
        .collect();
    assert!(files.iter().all(|f| f.starts_with("train-")), "{files:?}");
    let skips: Vec<_> = m.skipped.iter().filter(|s| s.split == "test").collect();
    assert_eq!(skips.len(), 8041);
    assert!(skips[0].path.starts_with("cars_test/"), "{:?}", skips[0]);
    // Resuming redoes nothing and writes the same manifest.
    let again = pipeline::prepare::prepare(&cfg, pipeline::prepare::Worker::ALL, false).unwrap();
    assert_eq!(again.written_shards, 0);
    let m2 = again.manifest.unwrap();
    assert_eq!((m2.splits, m2.shards, m2.skipped), (m.splits, m.shards, m.skipped));
}

#[test]
fn cars_bbox_crop() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cars");
    write_file(
        &root.join("anno_train.csv"),
        b"image_name,x_min,y_min,x_max,y_max,label\n00001.jpg,11,21,60,70,3\n",
    );
    write_file(&root.join("cars_train/00001.jpg"), &tiny_jpeg(100, 80, 9));
    let out = tmp.path().join("out");
    let mut cfg = config("stanford_cars", &root, &out);
    cfg.transcode.crop_to_bbox = true;
    let m = run(&cfg);
    let r = &rows(&out, &m)[0];
    assert_eq!(
        (r.width, r.height, r.label, r.bbox),
        (50, 50, 2, Some([11, 21, 60, 70]))
    );
}

#[test]
fn matfile_reads_devkit_structs() {
    let Some(fx) = shared("fixtures/stanford_cars/devkit") else {
        return;
    };
    let MatValue::Struct { dims, elements } = read_variable(&fx.join("cars_train_annos.mat"), "annotations").unwrap()
    else {
        panic!("annotations is a struct array")
    };
    assert_eq!(dims.iter().product::<usize>(), 8144);
    let first = &elements[0];
    assert_eq!(first["fname"].as_str(), Some("00001.jpg"));
    assert_eq!(first["class"].scalar(), Some(14.0));
    assert_eq!(first["bbox_x1"].scalar(), Some(39.0));
    let err = read_variable(&fx.join("cars_meta.mat"), "nope")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cars_meta.mat") && err.contains("class_names"), "{err}");
}

#[test]
fn food101_from_official_meta() {
    let Some(meta) = shared("fixtures/food101/meta") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("food-101");
    let mut expected = BTreeMap::new();
    let classes: Vec<String> = std::fs::read_to_string(meta.join("classes.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    for f in ["classes.txt", "train.txt", "test.txt"] {
        copy(&meta.join(f), &root.join("meta").join(f));
    }
    let jpeg = tiny_jpeg(24, 24, 3);
    for split in ["train", "test"] {
        for line in std::fs::read_to_string(meta.join(format!("{split}.txt")))
            .unwrap()
            .lines()
        {
            write_file(&root.join(format!("images/{line}.jpg")), &jpeg);
            let class = line.split('/').next().unwrap();
            expected.insert(
                format!("images/{line}.jpg"),
                (
                    split.to_string(),
                    classes.iter().position(|c| c == class).unwrap() as i32,
                ),
            );
        }
    }
    let out = tmp.path().join("out");
    let m = run(&config("food101", &root, &out));
    assert_eq!((m.splits["train"].images, m.splits["test"].images), (3750, 1250));
    assert_eq!(m.class_names, classes);
    assert!(m.skipped.is_empty());
    for r in rows(&out, &m) {
        assert_eq!(expected[&r.id], (r.split.clone(), r.label));
    }
}

#[test]
fn domainnet_clipart_lists() {
    let Some(dn) = shared("fixtures/domainnet") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("domainnet");
    let jpeg = tiny_jpeg(16, 16, 5);
    let mut expected = BTreeMap::new();
    for split in ["train", "test"] {
        let name = format!("clipart_{split}.txt");
        copy(&dn.join(&name), &root.join(&name));
        for line in std::fs::read_to_string(dn.join(&name)).unwrap().lines() {
            let (path, label) = line.rsplit_once(' ').unwrap();
            write_file(&root.join(path), &jpeg);
            expected.insert(path.to_string(), (split.to_string(), label.parse::<i32>().unwrap()));
        }
    }
    let l = adapters::list(
        "domainnet",
        &root,
        &AdapterOptions {
            domain: Some("clipart".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(l.class_names.len(), 345);
    assert_eq!(l.class_names[0], "aircraft_carrier");
    assert_eq!(l.images.len(), expected.len());
    assert_eq!(l.images.iter().filter(|i| i.split == "train").count(), 33525);
    for img in &l.images {
        assert_eq!(expected[&img.rel_path], (img.split.clone(), img.label));
        assert_eq!(img.domain.as_deref(), Some("clipart"));
        assert_eq!(
            l.class_names[img.label as usize],
            img.rel_path.split('/').nth(1).unwrap()
        );
    }
    // A prepare over a slice of the lists keeps the domain column.
    let small = tmp.path().join("small");
    for split in ["train", "test"] {
        let text: String = std::fs::read_to_string(dn.join(format!("clipart_{split}.txt")))
            .unwrap()
            .lines()
            .step_by(500)
            .map(|l| format!("{l}\n"))
            .collect();
        write_file(&small.join(format!("clipart_{split}.txt")), text.as_bytes());
        for line in text.lines() {
            write_file(&small.join(line.rsplit_once(' ').unwrap().0), &jpeg);
        }
    }
    let out = tmp.path().join("out");
    let mut cfg = config("domainnet", &small, &out);
    cfg.options.domain = Some("clipart".into());
    let m = run(&cfg);
    assert_eq!(m.splits["train"].images, 33525usize.div_ceil(500) as u64);
    assert!(rows(&out, &m).iter().all(|r| r.domain.as_deref() == Some("clipart")));
}

#[test]
fn inaturalist_2019_val_json() {
    let Some(json_path) = shared("fixtures/inaturalist/val2019.json") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("inat");
    copy(&json_path, &root.join("val2019.json"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let jpeg = tiny_jpeg(20, 20, 7);
    let mut cat_of = BTreeMap::new();
    for a in json["annotations"].as_array().unwrap() {
        cat_of.insert(a["image_id"].as_i64().unwrap(), a["category_id"].as_i64().unwrap());
    }
    let mut expected = BTreeMap::new();
    for img in json["images"].as_array().unwrap() {
        let f = img["file_name"].as_str().unwrap();
        write_file(&root.join(f), &jpeg);
        expected.insert(f.to_string(), cat_of[&img["id"].as_i64().unwrap()]);
    }
    let mut names: Vec<(i64, String)> = json["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_i64().unwrap(), c["name"].as_str().unwrap().to_string()))
        .collect();
    names.sort();
    let out = tmp.path().join("out");
    let mut cfg = config("inat", &root, &out);
    cfg.options.year = Some(2019);
    let m = run(&cfg);
    assert_eq!(m.splits["val"].images, 3030);
    assert_eq!(m.class_names.len(), 1010);
    for r in rows(&out, &m) {
        let cat = expected[&r.id];
        let label_id = names[r.label as usize].0;
        assert_eq!(label_id, cat, "{}", r.id);
        assert_eq!(m.class_names[r.label as usize], names[r.label as usize].1);
    }
}

#[test]
fn imagenet_flat_val_unknown_class_and_subset() {
    let Some(synsets) = shared("fixtures/imagenet/LOC_synset_mapping.txt") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imagenet");
    copy(&synsets, &root.join("LOC_synset_mapping.txt"));
    let wnids = ["n01440764", "n01443537", "n01484850"];
    for (c, w) in wnids.iter().enumerate() {
        for i in 0..10 {
            write_file(
                &root.join(format!("train/{w}/{w}_{i}.JPEG")),
                &tiny_jpeg(30, 20, (c * 10 + i) as u8),
            );
        }
    }
    write_file(&root.join("train/n99999999/x.JPEG"), &tiny_jpeg(30, 20, 0));
    let mut csv = String::from("ImageId,PredictionString\n");
    for i in 0..6 {
        let w = wnids[i % 3];
        write_file(
            &root.join(format!("val/ILSVRC2012_val_{i:08}.JPEG")),
            &tiny_jpeg(30, 20, i as u8),
        );
        csv.push_str(&format!("ILSVRC2012_val_{i:08},{w} 1 2 3 4 {w} 5 6 7 8\n"));
    }
    csv.push_str("ILSVRC2012_val_00000099,n01440764 1 2 3 4\n");
    write_file(&root.join("LOC_val_solution.csv"), csv.as_bytes());
    write_file(&root.join("val/ILSVRC2012_val_00000050.JPEG"), &tiny_jpeg(30, 20, 50));

    let out = tmp.path().join("out");
    let m = run(&config("imagenet", &root, &out));
    assert_eq!(
        m.class_names,
        vec![
            "tench, Tinca tinca",
            "goldfish, Carassius auratus",
            "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"
        ]
    );
    assert_eq!((m.splits["train"].images, m.splits["val"].images), (30, 6));
    let reasons: BTreeMap<&str, &str> = m.skipped.iter().map(|s| (s.path.as_str(), s.reason.as_str())).collect();
    assert!(
        reasons["train/n99999999/x.JPEG"].contains("unknown class \"n99999999\""),
        "{reasons:?}"
    );
    assert!(
        reasons["val/ILSVRC2012_val_00000050.JPEG"].contains("no label"),
        "{reasons:?}"
    );
    assert!(
        reasons["val/ILSVRC2012_val_00000099.JPEG"].contains("missing"),
        "{reasons:?}"
    );
    let val_labels: Vec<i32> = rows(&out, &m)
        .iter()
        .filter(|r| r.split == "val")
        .map(|r| r.label)
        .collect();
    assert_eq!(val_labels, vec![0, 1, 2, 0, 1, 2]);

    // Class-balanced subsets: exact per-class counts, deterministic, nested, val untouched.
    let list = |fraction, seed| {
        let mut cfg = config("imagenet", &root, &out);
        cfg.subset = Some(Subset { fraction, seed });
        pipeline::prepare::list_dataset(&cfg).unwrap().images
    };
    let a = list(0.3, 1);
    let train: Vec<_> = a.iter().filter(|i| i.split == "train").collect();
    assert_eq!(train.len(), 9);
    for c in 0..3 {
        assert_eq!(train.iter().filter(|i| i.label == c).count(), 3);
    }
    assert_eq!(a.iter().filter(|i| i.split == "val").count(), 6);
    assert_eq!(a, list(0.3, 1));
    assert_ne!(a, list(0.3, 2));
    let bigger = list(0.6, 1);
    assert!(
        train.iter().all(|i| bigger.contains(i)),
        "smaller subsets nest in larger ones"
    );
}

#[test]
fn ade20k_images_and_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ADEChallengeData2016");
    let mask = |w, h| {
        let m = image::GrayImage::from_fn(w, h, |x, _| image::Luma([(x % 7) as u8]));
        let mut out = Vec::new();
        m.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    for (split, n) in [("training", 3), ("validation", 2)] {
        for i in 0..n {
            write_file(
                &root.join(format!("images/{split}/ADE_{split}_{i:08}.jpg")),
                &tiny_jpeg(400, 300, i as u8),
            );
            if !(split == "training" && i == 2) {
                write_file(
                    &root.join(format!("annotations/{split}/ADE_{split}_{i:08}.png")),
                    &mask(400, 300),
                );
            }
        }
    }
    write_file(&root.join("annotations/validation/orphan.png"), &mask(4, 4));
    let out = tmp.path().join("out");
    let m = run(&config("ade20k", &root, &out));
    assert_eq!((m.splits["train"].images, m.splits["val"].images), (3, 2));
    assert_eq!(m.skipped.len(), 1);
    assert!(m.skipped[0].reason.contains("without an image"));
    for r in rows(&out, &m) {
        assert_eq!((r.width, r.height), (341, 256));
        if r.id.ends_with("training_00000002.jpg") {
            assert!(r.mask.is_none());
            continue;
        }
        let mk = image::load_from_memory(r.mask.as_ref().unwrap()).unwrap();
        assert_eq!((mk.width(), mk.height()), (341, 256), "mask resized with its image");
        assert!(mk.to_luma8().pixels().all(|p| p.0[0] < 7), "nearest keeps label values");
    }
}

#[test]
fn folder_with_split_folders_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mine");
    let jpeg = tiny_jpeg(12, 12, 4);
    for (rel, _) in [
        ("train/cat/a.jpg", 0),
        ("train/dog/b.jpg", 1),
        ("train/dog/deep/c.jpg", 1),
        ("val/dog/d.jpg", 1),
    ] {
        write_file(&root.join(rel), &jpeg);
    }
    write_file(&root.join("val/horse/e.jpg"), &jpeg);
    write_file(&root.join("train/loose.jpg"), &jpeg);
    write_file(&root.join("README.jpg"), &jpeg);
    write_file(&root.join("extra/f.jpg"), &jpeg);
    let l = adapters::list("folder", &root, &AdapterOptions::default()).unwrap();
    assert_eq!(l.class_names, vec!["cat", "dog"]);
    let got: Vec<(&str, &str, i32)> = l
        .images
        .iter()
        .map(|i| (i.split.as_str(), i.id.as_str(), i.label))
        .collect();
    assert_eq!(
        got,
        vec![
            ("train", "train/cat/a.jpg", 0),
            ("train", "train/dog/b.jpg", 1),
            ("train", "train/dog/deep/c.jpg", 1),
            ("train", "train/loose.jpg", -1),
            ("val", "val/dog/d.jpg", 1),
        ]
    );
    let skipped: Vec<&str> = l.skipped.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(skipped, vec!["README.jpg", "extra/f.jpg", "val/horse/e.jpg"]);
}

#[test]
fn folder_without_split_folders_holds_out_a_stable_stratified_val_split() {
    use pipeline::prepare::{list_dataset, Holdout};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mine");
    let jpeg = tiny_jpeg(12, 12, 4);
    // Three classes of 400, 200 and 60 images, plus an unlabeled file.
    let sizes = [("ants", 400), ("bees", 200), ("wasps", 60)];
    for (class, n) in sizes {
        for i in 0..n {
            write_file(&root.join(format!("{class}/{i:04}.jpg")), &jpeg);
        }
    }
    write_file(&root.join("loose.jpg"), &jpeg);
    let mut cfg = config("folder", &root, &tmp.path().join("out"));
    cfg.holdout = Some(Holdout { fraction: 0.2, seed: 0 });
    let val_ids = |cfg: &PrepareConfig| -> Vec<(String, i32)> {
        list_dataset(cfg)
            .unwrap()
            .images
            .into_iter()
            .filter(|i| i.split == "val")
            .map(|i| (i.id, i.label))
            .collect()
    };
    let val = val_ids(&cfg);
    // Stratified: each class keeps about 20% of its images in val (binomial sd: 8, 5.7, 3.1).
    for (label, (class, n)) in sizes.iter().enumerate() {
        let k = val.iter().filter(|(_, l)| *l == label as i32).count() as f64;
        let expect = 0.2 * *n as f64;
        let sd = (*n as f64 * 0.2 * 0.8).sqrt();
        assert!((k - expect).abs() < 3.0 * sd, "{class}: {k} of {n} held out");
    }
    assert!(
        val.iter().all(|(id, _)| id != "loose.jpg"),
        "unlabeled files stay in train"
    );
    // Deterministic for a seed, another seed draws another split.
    assert_eq!(val, val_ids(&cfg));
    let mut other = cfg.clone();
    other.holdout.as_mut().unwrap().seed = 1;
    assert_ne!(val, val_ids(&other));
    // Adding files moves no existing file between the splits.
    for i in 400..700 {
        write_file(&root.join(format!("ants/{i:04}.jpg")), &jpeg);
    }
    write_file(&root.join("moths/0000.jpg"), &jpeg);
    let grown = val_ids(&cfg);
    for (id, _) in &val {
        assert!(
            grown.iter().any(|(g, _)| g == id),
            "{id} left val when files were added"
        );
    }
    let new_val = grown.iter().filter(|(id, _)| !val.iter().any(|(v, _)| v == id));
    assert!(
        new_val
            .clone()
            .all(|(id, _)| id.as_str() >= "ants/0400.jpg" && id.starts_with("ants/") || id.starts_with("moths/")),
        "only new files join val"
    );
    // The manifest records the evaluation split; a layout that has one is left as it is.
    let m = run(&cfg);
    assert_eq!(m.eval_split(), "val");
    assert_eq!(m.splits["val"].images as usize, grown.len());
    let split_root = tmp.path().join("split");
    write_file(&split_root.join("train/ants/a.jpg"), &jpeg);
    write_file(&split_root.join("val/ants/b.jpg"), &jpeg);
    let mut with_val = config("folder", &split_root, &tmp.path().join("out2"));
    with_val.holdout = cfg.holdout.clone();
    assert_eq!(val_ids(&with_val), vec![("val/ants/b.jpg".to_string(), 0)]);
}
