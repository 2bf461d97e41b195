//! libFuzzer on one target: `FUZZ_TARGET=<name> fuzz <corpus folder> [libFuzzer flags]`.
//! Built by `make fuzz` with LLVM's sanitizer-coverage passes (stable Rust, no cargo-fuzz).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn chosen() -> &'static fuzz::Target {
    static T: OnceLock<&'static fuzz::Target> = OnceLock::new();
    T.get_or_init(|| {
        let name = std::env::var("FUZZ_TARGET").unwrap_or_default();
        fuzz::target(&name).unwrap_or_else(|| {
            let names: Vec<&str> = fuzz::TARGETS.iter().map(|t| t.name).collect();
            eprintln!("FUZZ_TARGET={name:?}: not a target; one of {}", names.join(", "));
            std::process::exit(2)
        })
    })
}

fuzz_target!(|data: &[u8]| (chosen().run)(data));
