//! A fixed number of mutants of the real files through every parser (`make test`); `make fuzz`
//! runs the coverage-guided engine for longer. Inputs that ever crashed a parser are kept in
//! `fuzz/regressions/<target>/` and run first.

use std::path::{Path, PathBuf};

use fuzz::mutate::run_cases;

/// Mutants per target (`FUZZ_CASES` overrides).
const CASES: u64 = 500;

fn regressions(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn fuzz_one(name: &str) {
    let t = fuzz::target(name).unwrap();
    let seeds = (t.seeds)();
    if seeds.is_empty() {
        assert!(
            !schemas::shared_data::required(),
            "{name}: its real seed files in {} are absent and shared data is required",
            schemas::shared_data::root().display()
        );
        eprintln!("SKIP {name}: its real seed files in ../shared are absent");
        return;
    }
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    let mut inputs = seeds.clone();
    inputs.extend(regressions(name));
    // The mutation seed is fixed per target, so a failure reproduces.
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let out = run_cases(t, &inputs, &seeds, cases, seed);
    eprintln!("{name}: {} executions, {} panics", out.executions, out.panics.len());
    if !out.panics.is_empty() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut report = Vec::new();
        for (i, (input, msg)) in out.panics.iter().enumerate().take(20) {
            let path = dir.join(format!("crash-{i}"));
            std::fs::write(&path, input).unwrap();
            report.push(format!("{}: {msg}", path.display()));
        }
        panic!("{name}: {} inputs panicked:\n{}", out.panics.len(), report.join("\n"));
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                fuzz_one(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_fuzzed_here() {
            let here = [$(stringify!($name)),*];
            let all: Vec<&str> = fuzz::TARGETS.iter().map(|t| t.name).collect();
            assert_eq!(here.to_vec(), all);
        }
    };
}

targets!(
    matfile,
    cars_devkit,
    cars_csv,
    coco,
    inat,
    food101,
    domainnet,
    imagenet,
    shard,
    image,
    vocab,
    manifest,
    recipe
);
