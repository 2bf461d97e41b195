//! Writes every target's seed corpus (made from the real files in ../shared) to
//! `<out>/<target>/seed-<i>`, for libFuzzer to start from: `fuzz-seeds target/fuzz/corpus`.

fn main() -> std::process::ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: fuzz-seeds <out folder>");
        return std::process::ExitCode::from(2);
    };
    for t in fuzz::TARGETS {
        let dir = out.join(t.name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("{}: {e}", dir.display());
            return std::process::ExitCode::FAILURE;
        }
        let seeds = (t.seeds)();
        for (i, s) in seeds.iter().enumerate() {
            let path = dir.join(format!("seed-{i}"));
            if let Err(e) = std::fs::write(&path, s) {
                eprintln!("{}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        }
        println!("{:<12} {} seeds  {}", t.name, seeds.len(), t.about);
    }
    std::process::ExitCode::SUCCESS
}
