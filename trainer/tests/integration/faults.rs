//! Faults a long run meets on a shared machine: a scheduler's SIGTERM, a full disk while a
//! checkpoint is written, shards damaged after they were written. The signal and disk tests
//! run the real binary; the damaged-shard test runs on a copy of the fixture dataset.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use trainer::train::finetune::FinetuneLine;
use trainer::train::pretrain::MetricsLine;
use trainer::train::run_folder::{read_state, SKIPPED_FILE};

use crate::{args, assert_same_losses, fixture, metrics, metrics_lines, run, Fixture};

/// `trainer <command>` on the fixture, quiet, writing `out`, with `args`.
fn trainer_argv(command: &str, f: &Fixture, out: &Path, args: &[&str]) -> Vec<String> {
    let prefix = [
        "--quiet",
        command,
        "--recipes",
        &crate::workspace().join("datasets").display().to_string(),
        "--data",
        &f.dir.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]
    .map(str::to_string);
    prefix.into_iter().chain(args.iter().map(|s| s.to_string())).collect()
}

/// `trainer pretrain` on the fixture: cpu-tiny, 4 updates of 16 images, logged every step.
fn pretrain_argv(f: &Fixture, out: &Path, extra: &[&str]) -> Vec<String> {
    let vocab = f.vocab_small.display().to_string();
    #[rustfmt::skip]
    let args = [
        "--vocab", &vocab, "--method", "splitmask", "--model", "cpu-tiny", "--batch-size", "16",
        "--max-steps", "4", "--epochs", "1", "--log-every", "1", "--warmup-epochs", "0.1",
        "--limit-images", "256",
    ];
    trainer_argv("pretrain", f, out, &[&args[..], extra].concat())
}

fn trainer(argv: &[String], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.args(argv).env_remove(pipeline::interrupt::FAULT_ENV);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The same command under a file-size limit of `kib` KiB (`ulimit -f`, no root needed): a
/// write past it fails with EFBIG, as a full disk fails with ENOSPC. SIGXFSZ is ignored so the
/// write returns the error instead of the signal killing the process.
fn trainer_limited(argv: &[String], kib: u64) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_trainer"))
        .args(argv)
        .env_remove(pipeline::interrupt::FAULT_ENV)
        .output()
        .unwrap()
}

/// The uninterrupted run both tests compare with, run once.
fn reference(f: &Fixture) -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-reference");
        let _ = std::fs::remove_dir_all(&out);
        let o = trainer(&pretrain_argv(f, &out, &[]), &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    })
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    metrics_lines::<MetricsLine>(out)
        .iter()
        .map(|l| (l.step, l.loss))
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sigterm_checkpoints_at_the_step_boundary_and_the_resumed_run_matches_an_uninterrupted_one() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let whole = reference(f);
    let reference = losses(whole);
    assert_eq!(reference.len(), 4);

    // One SIGTERM at the end of step 2: checkpoint, a distinct status, how to resume.
    let out = tmp.path().join("interrupted");
    let o = trainer(
        &pretrain_argv(f, &out, &[]),
        &[(pipeline::interrupt::FAULT_ENV, "step:2")],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(pipeline::interrupt::EXIT_INTERRUPTED), "{err}");
    assert!(err.contains("stopped by SIGTERM after step 2"), "{err}");
    assert!(err.contains("resume with:") && err.contains("--resume"), "{err}");
    let ckpt = out.join("checkpoint.safetensors");
    assert_eq!(read_state(&ckpt).unwrap().step, 2);
    assert_eq!(losses(&out).len(), 2);
    let o = trainer(&pretrain_argv(f, &out, &["--resume"]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_losses(&reference, &losses(&out), 1e-5);

    // Fine-tuning stops and resumes the same way. It stops after 3 of 4 steps (`--stop-after`),
    // where it evaluates 64 images: the final evaluation would read the whole val split.
    let init = whole.display().to_string();
    #[rustfmt::skip]
    let ft_args = [
        "--init", &init, "--batch-size", "16", "--max-steps", "4", "--stop-after", "3",
        "--eval-images", "64", "--epochs", "1", "--log-every", "1", "--limit-images", "256",
    ];
    let ft = |out: &Path, extra: &[&str]| trainer_argv("finetune", f, out, &[&ft_args[..], extra].concat());
    let lines = |dir: &Path| metrics_lines::<FinetuneLine>(dir);
    let ft_whole = tmp.path().join("ft-whole");
    let o = trainer(&ft(&ft_whole, &[]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ft_out = tmp.path().join("ft-interrupted");
    let o = trainer(&ft(&ft_out, &[]), &[(pipeline::interrupt::FAULT_ENV, "step:1")]);
    assert_eq!(
        o.status.code(),
        Some(pipeline::interrupt::EXIT_INTERRUPTED),
        "{}",
        stderr(&o)
    );
    assert_eq!(lines(&ft_out).len(), 1);
    let o = trainer(&ft(&ft_out, &["--resume"]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (lines(&ft_out), lines(&ft_whole));
    assert_eq!(a.len(), 3);
    let ft_losses = |l: &[FinetuneLine]| l.iter().map(|l| (l.step, l.loss)).collect::<Vec<_>>();
    assert_same_losses(&ft_losses(&a), &ft_losses(&b), 1e-5);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.eval_top1, y.eval_top1);
    }
    assert!(a[2].eval_top1.is_some(), "the last step evaluates");

    // A second signal exits at once with 128 + SIGTERM, before any checkpoint.
    let out = tmp.path().join("twice");
    let o = trainer(
        &pretrain_argv(f, &out, &[]),
        &[(pipeline::interrupt::FAULT_ENV, "step:1:2")],
    );
    assert_eq!(o.status.code(), Some(128 + 15), "{}", stderr(&o));
    assert!(!out.join("checkpoint.safetensors").exists());
}

#[test]
fn sigterm_stops_every_worker_of_a_data_parallel_run_at_the_same_step() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // 2 workers x 8 with global negatives follow the 1 x 16 reference.
    let two = |out: &Path, extra: &[&str]| {
        let mut argv = pretrain_argv(f, out, &[&["--devices", "cpu:2"][..], extra].concat());
        let at = argv.iter().position(|a| a == "--batch-size").unwrap();
        argv[at + 1] = "8".into();
        argv
    };
    let out = tmp.path().join("interrupted");
    let o = trainer(&two(&out, &[]), &[(pipeline::interrupt::FAULT_ENV, "step:2")]);
    let err = stderr(&o);
    // Rank 0 saw the signal; the ranks agreed, rank 0 checkpointed and its error is the one
    // reported (not the other rank's).
    assert_eq!(o.status.code(), Some(pipeline::interrupt::EXIT_INTERRUPTED), "{err}");
    assert!(err.contains("stopped by SIGTERM after step 2"), "{err}");
    assert_eq!(read_state(&out.join("checkpoint.safetensors")).unwrap().step, 2);
    assert_eq!(losses(&out).len(), 2);
    let o = trainer(&two(&out, &["--resume"]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_losses(&losses(reference(f)), &losses(&out), 1e-4);
}

#[test]
fn two_processes_on_localhost_train_as_one_and_a_signal_to_either_stops_both() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("two-nodes");
    // Multi-node mode: node 0 hosts the orchestrator, each process one CPU device with 8 of
    // the 16 images of every batch; both name the same run folder (one machine's disk).
    let first = free_ports(3);
    let nodes = |extra: &[&str]| {
        let master = format!("127.0.0.1:{first}");
        [0, 1].map(|rank| {
            let rank = rank.to_string();
            let node = ["--num-nodes", "2", "--node-rank", &rank, "--master", &master];
            let mut argv = pretrain_argv(f, &out, &[&node[..], extra].concat());
            let at = argv.iter().position(|a| a == "--batch-size").unwrap();
            argv[at + 1] = "8".into();
            argv
        })
    };
    // A SIGTERM to node 1 after step 2: node 0 hears of it at that step's end, writes the
    // checkpoint, and both exit saying how to resume.
    // Every connection between them proves it knows the secret; a node without it cannot
    // join (`cluster_auth` tests the handshake itself).
    let secret = (trainer::train::config::SECRET_ENV, "a secret the two nodes share");
    let [a, b] = nodes(&[]);
    let runs = [
        (a, vec![secret]),
        (b, vec![secret, (pipeline::interrupt::FAULT_ENV, "step:2")]),
    ];
    let ([o0, o1], listening) = trainers_watched(runs, first..first + 3);
    // The orchestrator and both tensor services listen on the host they were given only.
    assert!(!listening.is_empty(), "no listening socket seen on {first}..+3");
    assert!(
        listening.iter().all(|l| l.starts_with("0100007F:")),
        "a service listens beyond 127.0.0.1: {listening:?}"
    );
    let (e0, e1) = (stderr(&o0), stderr(&o1));
    for (o, e) in [(&o0, &e0), (&o1, &e1)] {
        assert_eq!(o.status.code(), Some(pipeline::interrupt::EXIT_INTERRUPTED), "{e}");
    }
    assert!(e1.contains("stopped by SIGTERM after step 2"), "{e1}");
    assert!(
        e0.contains("stopped by a signal to another rank's process after step 2"),
        "{e0}"
    );
    assert!(e0.contains("node 0 of 2: 1 device(s), ranks 0..1"), "{e0}");
    assert_eq!(read_state(&out.join("checkpoint.safetensors")).unwrap().step, 2);
    assert_eq!(losses(&out).len(), 2);

    // Resumed on both nodes, the run ends where one process with the whole batch ends.
    let [a, b] = nodes(&["--resume"]);
    let [o0, o1] = trainers_together([(a, vec![secret]), (b, vec![secret])]);
    assert!(o0.status.success(), "{}", stderr(&o0));
    assert!(o1.status.success(), "{}", stderr(&o1));
    assert!(String::from_utf8_lossy(&o1.stdout).contains("node 1 of 2: pre-trained 4 steps"));
    assert_same_losses(&losses(reference(f)), &losses(&out), 1e-4);

    // A node that resumes from elsewhere (another step) is refused on every node.
    let [mut a, mut b] = nodes(&["--resume"]);
    a.retain(|x| x != "--resume");
    for argv in [&mut a, &mut b] {
        let at = argv.iter().position(|x| x == "--max-steps").unwrap();
        argv[at + 1] = "5".into();
    }
    let other = tmp.path().join("fresh");
    let at = a.iter().position(|x| x == "--out").unwrap();
    a[at + 1] = other.display().to_string();
    let [o0, o1] = trainers_together([(a, vec![secret]), (b, vec![secret])]);
    for o in [&o0, &o1] {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
    }
    assert!(
        stderr(&o1).contains("the ranks disagree on the step resumed from"),
        "{}",
        stderr(&o1)
    );
}

#[test]
fn a_node_whose_peers_never_come_stops_with_an_error_after_the_collective_timeout() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let master = format!("127.0.0.1:{}", free_ports(3));
    let node = [
        "--num-nodes",
        "2",
        "--node-rank",
        "0",
        "--master",
        &master,
        "--collective-timeout",
        "3",
    ];
    let mut argv = pretrain_argv(f, &tmp.path().join("alone"), &node);
    let at = argv.iter().position(|a| a == "--batch-size").unwrap();
    argv[at + 1] = "8".into();
    let o = trainer(
        &argv,
        &[(trainer::train::config::SECRET_ENV, "a secret the two nodes share")],
    );
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(trainer::train::parallel::watchdog::EXIT_TIMED_OUT),
        "{err}"
    );
    assert!(
        err.contains("registering with the other nodes got no answer from the other nodes in 3 s"),
        "{err}"
    );
}

/// A port `p` with `p..p + n` free on this machine now.
fn free_ports(n: u16) -> u16 {
    (0..100)
        .find_map(|_| {
            let p = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let held: Option<Vec<_>> = (0..n)
                .map(|i| std::net::TcpListener::bind(("0.0.0.0", p.checked_add(i)?)).ok())
                .collect();
            held.map(|_| p)
        })
        .expect("free ports")
}

/// A trainer command line and the environment variables it runs with.
type Run<'a> = (Vec<String>, Vec<(&'a str, &'a str)>);

/// Runs both trainer commands at once (each with its environment) and waits for both; a
/// run that hangs is killed after five minutes and reported with what it printed.
fn trainers_together(runs: [Run<'_>; 2]) -> [Output; 2] {
    trainers_watched(runs, 0..0).0
}

/// [`trainers_together`], and the local addresses (`/proc/net/tcp*`, hex as the kernel
/// writes them) seen listening on `ports` while the two ran.
fn trainers_watched(runs: [Run<'_>; 2], ports: std::ops::Range<u16>) -> ([Output; 2], BTreeSet<String>) {
    let mut listening = BTreeSet::new();
    let children = runs.map(|(argv, env)| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
        c.args(&argv).env_remove(pipeline::interrupt::FAULT_ENV);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = c.spawn().unwrap();
        let pid = child.id();
        let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
        (pid, waiter)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while children.iter().any(|(_, w)| !w.is_finished()) && std::time::Instant::now() < deadline {
        listening.extend(listeners(&ports));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let hung = children.iter().any(|(_, w)| !w.is_finished());
    if hung {
        for (pid, _) in &children {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
    let outputs = children.map(|(_, w)| w.join().unwrap());
    assert!(
        !hung,
        "the two nodes did not finish in 5 minutes:\n{}\n---\n{}",
        stderr(&outputs[0]),
        stderr(&outputs[1])
    );
    (outputs, listening)
}

/// Local addresses listening on one of `ports` now, from the kernel's socket tables: the
/// address in the kernel's hex (`0100007F` is 127.0.0.1, all zeros every interface).
fn listeners(ports: &std::ops::Range<u16>) -> Vec<String> {
    const LISTEN: &str = "0A";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let (addr, port) = f.get(1)?.rsplit_once(':')?;
                    let port = u16::from_str_radix(port, 16).ok()?;
                    (f.get(3) == Some(&LISTEN) && ports.contains(&port)).then(|| format!("{addr}:{port}"))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_checkpoint_write_that_fails_leaves_the_previous_checkpoint_loadable() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let whole = reference(f);
    let out = tmp.path().join("full");
    let o = trainer(&pretrain_argv(f, &out, &["--stop-after", "2"]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = out.join("checkpoint.safetensors");
    let good = std::fs::read(&ckpt).unwrap();
    assert!(
        good.len() > 1 << 20,
        "the limit below must be under the checkpoint's size"
    );

    // The resumed run's checkpoint at step 4 cannot be written (metrics lines still can).
    let o = trainer_limited(&pretrain_argv(f, &out, &["--resume"]), 512);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("checkpoint.safetensors: writing failed"), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        good,
        "the previous checkpoint is untouched"
    );
    let temps: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "the temp file is removed: {temps:?}");
    assert_eq!(read_state(&ckpt).unwrap().step, 2);

    // With space again, the run resumes from it to the uninterrupted result.
    let o = trainer(&pretrain_argv(f, &out, &["--resume"]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_losses(&losses(whole), &losses(&out), 1e-5);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The file offset of `needle` in `hay` (it must occur exactly once).
fn find_once(hay: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the needle must be unique");
    hits[0]
}

#[test]
fn damaged_shards_are_named_corrupt_rows_are_skipped_and_recorded_unreadable_shards_stop_the_run() {
    let Some(f) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&f.dir, &data);
    let manifest = pipeline::prepare::load_manifest(&data).unwrap();
    let shard = manifest.shards.iter().find(|s| s.split == "train").unwrap();
    let shard_path: PathBuf = data.join(&shard.file);

    // Image bytes are stored uncompressed: find row 5's JPEG in the file and break its header.
    let victim = pipeline::shard::ShardReader::open(&shard_path)
        .unwrap()
        .nth(5)
        .unwrap()
        .unwrap();
    let mut bytes = std::fs::read(&shard_path).unwrap();
    let mid = victim.image.len() / 2;
    let start = find_once(&bytes, &victim.image[mid..mid + 64]) - mid;
    assert_eq!(&bytes[start..start + 2], &[0xff, 0xd8]);
    bytes[start] = 0;
    bytes[start + 1] = 0;
    std::fs::write(&shard_path, &bytes).unwrap();

    let extra = [
        "--model",
        "cpu-tiny",
        "--batch-size",
        "16",
        "--max-steps",
        "2",
        "--epochs",
        "1",
    ];
    let resolve = |out: &str| {
        let mut cfg = args(f, &f.vocab_small, &tmp.path().join(out), &extra)
            .resolve()
            .unwrap();
        cfg.run.data = data.clone();
        cfg
    };
    let cfg = resolve("skips");
    let summary = run(&cfg, false);
    assert_eq!(summary.steps, 2, "the run goes on without the corrupt row");
    assert_eq!(metrics(&cfg).last().unwrap().step, 2);
    let skipped: Vec<serde_json::Value> = std::fs::read_to_string(cfg.run.out.join(SKIPPED_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("sha256"), "{skipped:?}");
    assert_eq!(skipped[0]["shard"], shard.file.as_str());
    assert_eq!(skipped[1]["row"], 5);
    assert_eq!(skipped[1]["id"], victim.id.as_str());
    assert!(skipped[1]["reason"].as_str().unwrap().contains("do not decode"));
    // Resuming meets the same rows and records them once.
    let mut more = cfg.clone();
    more.schedule.stop_after = None;
    trainer::train::pretrain::pretrain::<trainer::CpuAutodiff>(&more, true, &[Default::default()], false).unwrap();
    let lines = std::fs::read_to_string(cfg.run.out.join(SKIPPED_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 2);

    // A truncated shard (a copy cut short) cannot be opened: the run stops before step 1,
    // naming it.
    std::fs::write(&shard_path, &bytes[..bytes.len() / 2]).unwrap();
    let cfg = resolve("truncated");
    let err = trainer::train::pretrain::pretrain::<trainer::CpuAutodiff>(&cfg, false, &[Default::default()], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&shard.file) && err.contains("cannot be read"), "{err}");
    assert!(!cfg.run.metrics_path().exists() && !cfg.run.checkpoint_path().exists());
}
