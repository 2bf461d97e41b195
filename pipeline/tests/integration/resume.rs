//! Resumability (kill half-way, rerun, same result), damaged-shard detection, and job-array
//! workers merged into one manifest. These run the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use schemas::Manifest;

/// A folder dataset of real Imagenette photos (symlinked), resized so each needs a re-encode.
fn dataset(tmp: &Path, per_class: usize) -> Option<PathBuf> {
    let src = shared("data/imagenette/train")?;
    let root = tmp.join("photos");
    let mut classes: Vec<_> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    classes.sort();
    for class in classes.iter().take(4) {
        let mut files: Vec<_> = std::fs::read_dir(class).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let dst = root.join(class.file_name().unwrap());
        std::fs::create_dir_all(&dst).unwrap();
        for f in files.iter().take(per_class) {
            std::os::unix::fs::symlink(f, dst.join(f.file_name().unwrap())).unwrap();
        }
    }
    Some(root)
}

fn prepare_cmd(root: &Path, out: &Path, shard_mb: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    c.args([
        "prepare",
        "--dataset",
        "folder",
        "--no-progress",
        "--max-short-side",
        "160",
        "--shard-mb",
        shard_mb,
    ])
    .arg("--recipes")
    .arg(workspace().join("datasets"))
    .arg("--data-dir")
    .arg(root)
    .arg("--out")
    .arg(out)
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

fn load(out: &Path) -> Manifest {
    let mut m = pipeline::prepare::load_manifest(out).unwrap();
    m.wall_time_s = 0.0;
    m.source = String::new();
    m
}

fn parts(out: &Path) -> usize {
    std::fs::read_dir(out.join(".parts"))
        .map(|d| {
            d.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn killed_prepare_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = dataset(tmp.path(), 150) else { return };
    let reference = tmp.path().join("reference");
    let status = prepare_cmd(&root, &reference, "2", &[]).status().unwrap();
    assert!(status.success());
    let expected = load(&reference);
    assert!(
        expected.shards.len() >= 4,
        "the test needs several shards, got {}",
        expected.shards.len()
    );

    let out = tmp.path().join("killed");
    let mut child = prepare_cmd(&root, &out, "2", &[]).spawn().unwrap();
    let start = Instant::now();
    while parts(&out) < 2 {
        assert!(start.elapsed() < Duration::from_secs(120), "prepare made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "prepare finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.join("manifest.json").exists(), "killed before the manifest");
    let done_before = parts(&out);
    assert!(done_before < expected.shards.len(), "killed half-way");

    let rerun = prepare_cmd(&root, &out, "2", &[]).output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(
        stdout.contains(&format!("({done_before} kept from an earlier run)")),
        "{stdout}"
    );
    assert_eq!(load(&out), expected);
    for s in &expected.shards {
        assert_eq!(
            std::fs::read(out.join(&s.file)).unwrap(),
            std::fs::read(reference.join(&s.file)).unwrap()
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // A damaged shard fails its checksum and is rewritten on the next run.
    let victim = out.join(&expected.shards[1].file);
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let (_, report) = pipeline::inspect::verify(&out).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("sha256")),
        "{:?}",
        report.problems
    );
    // So is a truncated one (a copy cut short).
    let cut = out.join(&expected.shards[2].file);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let again = prepare_cmd(&root, &out, "2", &[]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("wrote 2 shards"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(load(&out), expected);
}

fn pipeline_cmd(args: &[&str], data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    c.args(args)
        .arg("--data")
        .arg(data)
        .env_remove(pipeline::interrupt::FAULT_ENV);
    c
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// SIGTERM (raised by the process itself at a chosen point, through the real handlers) stops
/// `prepare`, `tokenize` and `vocab build` with status 75 and a line saying how to go on; a
/// write that fails (a file-size limit, as a full disk) names the file and leaves no temp
/// file; each rerun ends where an uninterrupted run does.
#[test]
fn signals_and_failed_writes_stop_prepare_tokenize_and_vocab_cleanly_and_reruns_match() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = dataset(tmp.path(), 60) else { return };
    let fault = pipeline::interrupt::FAULT_ENV;
    let code = Some(pipeline::interrupt::EXIT_INTERRUPTED);
    let reference = tmp.path().join("reference");
    assert!(prepare_cmd(&root, &reference, "1", &[]).status().unwrap().success());
    let expected = load(&reference);
    assert!(expected.shards.len() >= 3, "{}", expected.shards.len());

    let out = tmp.path().join("out");
    let o = prepare_cmd(&root, &out, "1", &[])
        .env(fault, "shard:2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), code, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stopped by SIGTERM after 2 of the"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("run the same command again"), "{}", stderr(&o));
    assert_eq!(parts(&out), 2);
    assert!(!out.join("manifest.json").exists());
    let o = prepare_cmd(&root, &out, "1", &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(2 kept from an earlier run)"));
    assert_eq!(load(&out), expected);

    // A shard write past a 64 KiB file-size limit fails naming the shard; nothing is left
    // half-written and the rerun completes.
    let limited = tmp.path().join("limited");
    let o = Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\"")
        .arg(prepare_cmd(&root, &limited, "1", &[]).get_program())
        .args(prepare_cmd(&root, &limited, "1", &[]).get_args())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(".parquet: writing failed") && err.contains("File too large"),
        "{err}"
    );
    let tmps = std::fs::read_dir(&limited)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(tmps, 0, "a failed write removes its temp file");
    assert!(prepare_cmd(&root, &limited, "1", &[]).status().unwrap().success());
    assert_eq!(load(&limited), expected);

    // tokenize: stopped after its first token shard, then resumed.
    let vocab = |data: &Path, kind: &str, extra: &[&str], env: Option<&str>| {
        let mut c = pipeline_cmd(
            &["vocab", "build", "--kind", kind, "--size", "64", "--no-progress"],
            data,
        );
        c.args(extra);
        if let Some(e) = env {
            c.env(fault, e);
        }
        c.output().unwrap()
    };
    // One vocabulary for both (it records the manifest it was built from, whose wall time
    // differs between the two folders).
    let o = vocab(&reference, "random-patches", &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let vocab_file = "vocab-random_patches-64-s0.safetensors";
    std::fs::copy(reference.join(vocab_file), out.join(vocab_file)).unwrap();
    let tokenize = |data: &Path| {
        let mut c = pipeline_cmd(&["tokenize", "--no-progress"], data);
        c.arg("--vocab").arg(data.join(vocab_file));
        c
    };
    let o = tokenize(&reference).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tokenize(&out).env(fault, "token-shard:1").output().unwrap();
    assert_eq!(o.status.code(), code, "{}", stderr(&o));
    assert!(stderr(&o).contains("after 1 of"), "{}", stderr(&o));
    let o = tokenize(&out).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (load(&out), load(&reference));
    assert_eq!(a.tokens.len(), 1);
    assert_eq!(
        a.tokens, b.tokens,
        "the resumed token shards are the uninterrupted ones"
    );

    // k-means: stopped between iterations with no vocabulary written; the rerun continues
    // from the saved state to the vocabulary of an uninterrupted build.
    let km = ["--sample", "5000", "--iterations", "4"];
    let whole = out.join("whole.safetensors");
    let o = vocab(
        &out,
        "kmeans",
        &[&km[..], &["--out", whole.to_str().unwrap()]].concat(),
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = vocab(&out, "kmeans", &km, Some("kmeans:2"));
    assert_eq!(o.status.code(), code, "{}", stderr(&o));
    assert!(stderr(&o).contains("k-means iteration 2 of 4"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a rerun continues from this iteration"),
        "{}",
        stderr(&o)
    );
    let file = out.join("vocab-kmeans-64-s0.safetensors");
    let state = pipeline::vocab::kmeans_state_path(&file);
    assert!(!file.exists() && state.exists());
    let o = vocab(&out, "kmeans", &km, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!state.exists(), "the state goes once the vocabulary is saved");
    let (a, _) = pipeline::vocab::tokenizer::Vocabulary::load(&whole).unwrap();
    let (b, _) = pipeline::vocab::tokenizer::Vocabulary::load(&file).unwrap();
    let (ka, kb) = (a.header.kmeans.unwrap(), b.header.kmeans.unwrap());
    assert_eq!(ka.inertia.len(), 4);
    for (x, y) in ka.inertia.iter().zip(&kb.inertia) {
        assert!((x - y).abs() <= 1e-9 * x.abs(), "{:?} vs {:?}", ka.inertia, kb.inertia);
    }
    let diff = a
        .embeddings
        .iter()
        .zip(&b.embeddings)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-6, "centroids differ by {diff}");
}

#[test]
fn job_array_workers_merge_to_the_single_run_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = dataset(tmp.path(), 80) else { return };
    let single = tmp.path().join("single");
    assert!(prepare_cmd(&root, &single, "1", &[]).status().unwrap().success());
    let out = tmp.path().join("array");
    for i in 0..3 {
        let o = prepare_cmd(
            &root,
            &out,
            "1",
            &["--num-shards", "3", "--shard-index", &i.to_string()],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        if i < 2 {
            assert!(!out.join("manifest.json").exists(), "workers do not write the manifest");
        }
    }
    let merge = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("merge")
        .arg(&out)
        .output()
        .unwrap();
    assert!(merge.status.success(), "{}", String::from_utf8_lossy(&merge.stderr));
    let mut a = load(&out);
    let mut b = load(&single);
    a.source.clear();
    b.source.clear();
    assert!(b.shards.len() >= 3);
    assert_eq!(a, b);

    // Merging with a worker missing names the unfinished shards.
    std::fs::remove_file(out.join(".parts").join(format!("{}.json", b.shards[0].file))).unwrap();
    let merge = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("merge")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!merge.status.success());
    assert!(String::from_utf8_lossy(&merge.stderr).contains(&b.shards[0].file));
}

/// While one `prepare` holds the output folder, a second one (the real binary, another
/// process) is refused with the holder named and writes nothing; a job array's workers hold
/// locks of their own, so they never refuse each other.
#[test]
fn a_second_prepare_into_the_same_folder_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = dataset(tmp.path(), 5) else { return };
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let held = pipeline::lock::FolderLock::acquire(&out, pipeline::lock::LOCK_FILE, "prepare").unwrap();
    let o = prepare_cmd(&root, &out, "1", &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("another process writes this folder") && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists() && !out.join("prepare.json").exists());
    let worker = prepare_cmd(&root, &out, "1", &["--num-shards", "2", "--shard-index", "0"])
        .output()
        .unwrap();
    assert!(worker.status.success(), "{}", String::from_utf8_lossy(&worker.stderr));
    drop(held);
    let o = prepare_cmd(&root, &out, "1", &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(load(&out).splits["train"].images, 20);
}
