//! Bad input is a clear error naming the file, or a listed skip; never a panic, never lost.

use crate::common::*;
use pipeline::adapters::{self, AdapterOptions};

/// The error message of a listing that must fail.
fn list_err(adapter: &str, root: &std::path::Path, opts: &AdapterOptions) -> String {
    match adapters::list(adapter, root, opts) {
        Ok(_) => panic!("{adapter} listing of {} should fail", root.display()),
        Err(e) => e.to_string(),
    }
}

fn domain(name: &str) -> AdapterOptions {
    AdapterOptions {
        domain: Some(name.into()),
        ..Default::default()
    }
}

fn food_root(tmp: &std::path::Path) -> std::path::PathBuf {
    let root = tmp.join("food");
    write_file(&root.join("meta/classes.txt"), b"apple_pie\nbaklava\n");
    write_file(
        &root.join("meta/train.txt"),
        b"apple_pie/1\nbaklava/2\nsushi/3\napple_pie/4\n",
    );
    write_file(&root.join("meta/test.txt"), b"baklava/5\n");
    for id in ["apple_pie/1", "baklava/2", "sushi/3", "baklava/5"] {
        write_file(&root.join(format!("images/{id}.jpg")), &tiny_jpeg(10, 10, 1));
    }
    write_file(&root.join("images/apple_pie/stray.jpg"), &tiny_jpeg(10, 10, 2));
    root
}

#[test]
fn missing_image_unknown_class_and_stray_file_are_listed_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let root = food_root(tmp.path());
    let out = tmp.path().join("out");
    let m = run(&config("food101", &root, &out));
    assert_eq!((m.splits["train"].images, m.splits["test"].images), (2, 1));
    let reasons: Vec<(String, String)> = m.skipped.iter().map(|s| (s.path.clone(), s.reason.clone())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let find = |p: &str| {
        reasons
            .iter()
            .find(|(path, _)| path == p)
            .map(|(_, r)| r.as_str())
            .unwrap_or("")
    };
    assert!(find("images/apple_pie/4.jpg").contains("missing"), "{reasons:?}");
    assert!(
        find("images/sushi/3.jpg").contains("unknown class \"sushi\""),
        "{reasons:?}"
    );
    assert!(find("images/sushi/3.jpg").contains("train.txt:3"), "{reasons:?}");
    assert!(find("images/apple_pie/stray.jpg").contains("not listed"), "{reasons:?}");
    assert_eq!(m.splits["train"].skipped, 2);
}

/// Metadata is outside input: an entry that leaves the root (`..`), or reaches a device or a
/// FIFO through a symlink, is a listed skip with its reason; nothing outside the root is read
/// and nothing blocks. A symlink to a regular image elsewhere is followed (symlink farms).
#[cfg(unix)]
#[test]
fn metadata_entries_outside_the_root_devices_and_fifos_are_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let root = food_root(tmp.path());
    let private = tmp.path().join("private.jpg");
    write_file(&private, &tiny_jpeg(12, 12, 9));
    let images = root.join("images/apple_pie");
    std::os::unix::fs::symlink("/dev/zero", images.join("zero.jpg")).unwrap();
    std::os::unix::fs::symlink(&private, images.join("farm.jpg")).unwrap();
    let fifo = std::ffi::CString::new(images.join("fifo.jpg").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    write_file(
        &root.join("meta/train.txt"),
        b"apple_pie/1\nbaklava/2\napple_pie/../../../private\napple_pie/zero\napple_pie/fifo\napple_pie/farm\n",
    );
    let out = tmp.path().join("out");
    let m = run(&config("food101", &root, &out));
    let reason = |p: &str| {
        let s = m.skipped.iter().find(|s| s.path == p);
        s.map_or_else(|| panic!("{p} is not a skip: {:?}", m.skipped), |s| s.reason.clone())
    };
    assert!(reason("images/apple_pie/../../../private.jpg").contains("not a relative path inside"));
    assert!(reason("images/apple_pie/zero.jpg").contains("not a regular file"));
    assert!(reason("images/apple_pie/fifo.jpg").contains("not a regular file"));
    let ids: Vec<String> = rows(&out, &m).into_iter().map(|r| r.path).collect();
    assert!(ids.contains(&"images/apple_pie/farm.jpg".to_string()), "{ids:?}");
    assert_eq!(m.splits["train"].images, 3, "1, 2 and the symlinked farm image");
}

/// Settings that would write outside the output folder or skip everything are refused before
/// anything is written.
#[test]
fn an_eval_split_outside_the_known_names_and_a_zero_pixel_budget_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = food_root(tmp.path());
    let out = tmp.path().join("out");
    let mut cfg = config("food101", &root, &out);
    cfg.eval_split = "../../elsewhere".into();
    let Err(err) = pipeline::prepare::prepare(&cfg, pipeline::prepare::Worker::ALL, false) else {
        panic!("refused")
    };
    let err = err.to_string();
    assert!(err.contains("eval split \"../../elsewhere\""), "{err}");
    let mut cfg = config("food101", &root, &out);
    cfg.transcode.max_pixels = 0;
    let Err(err) = pipeline::prepare::prepare(&cfg, pipeline::prepare::Worker::ALL, false) else {
        panic!("refused")
    };
    let err = err.to_string();
    assert!(err.contains("max pixels"), "{err}");
    assert!(!tmp.path().join("elsewhere").exists());
}

#[test]
fn missing_metadata_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = food_root(tmp.path());
    std::fs::remove_file(root.join("meta/classes.txt")).unwrap();
    let err = list_err("food101", &root, &AdapterOptions::default());
    assert!(err.contains("meta/classes.txt") && err.contains("not found"), "{err}");

    let err = list_err("domainnet", &root, &domain("sketch"));
    assert!(err.contains("sketch_train.txt"), "{err}");

    let coco = tmp.path().join("coco");
    write_file(&coco.join("train2017/1.jpg"), &tiny_jpeg(8, 8, 0));
    let err = list_err("coco", &coco, &AdapterOptions::default());
    assert!(err.contains("instances_train2017.json"), "{err}");

    let cars = tmp.path().join("cars");
    std::fs::create_dir_all(&cars).unwrap();
    let err = list_err("stanford_cars", &cars, &AdapterOptions::default());
    assert!(err.contains("cars_train_annos.mat"), "{err}");
}

#[test]
fn malformed_metadata_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dn");
    write_file(
        &root.join("clipart_train.txt"),
        b"clipart/cat/1.jpg 0\nclipart/dog/2.jpg zero\n",
    );
    write_file(&root.join("clipart_test.txt"), b"");
    let err = list_err("domainnet", &root, &domain("clipart"));
    assert!(err.contains("clipart_train.txt:2") && err.contains("zero"), "{err}");

    write_file(
        &root.join("clipart_train.txt"),
        b"clipart/cat/1.jpg 0\nclipart/dog/2.jpg 0\n",
    );
    let err = list_err("domainnet", &root, &domain("clipart"));
    assert!(err.contains("was class \"cat\""), "{err}");

    let coco = tmp.path().join("coco");
    write_file(&coco.join("annotations/instances_val2017.json"), b"{\"images\": [");
    let err = list_err("coco", &coco, &AdapterOptions::default());
    assert!(err.contains("instances_val2017.json") && err.contains("JSON"), "{err}");

    let cars = tmp.path().join("cars");
    write_file(
        &cars.join("anno_train.csv"),
        b"image_name,x_min,y_min,x_max,y_max,label\n1.jpg,1,2,3,4,999\n",
    );
    let err = list_err("stanford_cars", &cars, &AdapterOptions::default());
    assert!(err.contains("anno_train.csv:2") && err.contains("999"), "{err}");

    let mat = tmp.path().join("bad.mat");
    write_file(&mat, b"not a mat file at all, just text");
    let err = pipeline::matfile::read_mat(&mat).unwrap_err().to_string();
    assert!(err.contains("bad.mat"), "{err}");
}

#[test]
fn empty_or_missing_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = list_err("folder", &empty, &AdapterOptions::default());
    assert!(err.contains("no images found") && err.contains("empty"), "{err}");
    let err = list_err("folder", &tmp.path().join("nope"), &AdapterOptions::default());
    assert!(err.contains("nope") && err.contains("not a directory"), "{err}");
    let err = list_err("imagenet", &empty, &AdapterOptions::default());
    assert!(err.contains("train"), "{err}");
    let err = list_err("bogus", &empty, &AdapterOptions::default());
    assert!(err.contains("unknown adapter \"bogus\""), "{err}");
}

/// A JPEG bomb (a few KB whose frame header claims 65535 x 65535, 12.9 GB of RGB) is a listed
/// skip naming the pixel budget, under a 4 GiB address-space limit: its pixels are never
/// allocated, and the real image beside it is a row.
#[cfg(unix)]
#[test]
fn a_jpeg_bomb_is_a_skip_under_a_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("raw");
    let real = tiny_jpeg(64, 48, 3);
    let mut bomb = real.clone();
    let sof = bomb
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG");
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    write_file(&root.join("train/a/real.jpg"), &real);
    write_file(&root.join("train/a/bomb.jpg"), &bomb);
    write_file(&root.join("val/a/real.jpg"), &real);
    let out = tmp.path().join("out");
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg("ulimit -v 4194304; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_pipeline"))
        .args(["prepare", "--dataset", "folder", "--no-progress", "--recipes"])
        .arg(workspace().join("datasets"))
        .arg("--data-dir")
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "done, one input skipped: {err}");
    let m: schemas::Manifest = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let skip = m.skipped.iter().find(|s| s.path.ends_with("bomb.jpg"));
    let reason = skip.map_or_else(|| panic!("no skip for the bomb: {:?}", m.skipped), |s| &s.reason);
    assert!(
        reason.contains("65535x65535") && reason.contains("decoding budget"),
        "{reason}"
    );
    assert_eq!(m.splits["train"].images, 1);
}
