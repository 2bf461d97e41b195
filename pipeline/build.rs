//! Builds the dataset recipes (`../datasets/*.toml`) into the binaries, so an installed
//! `pipeline` or `trainer` prepares and trains from any folder (`recipe::Recipes::BuiltIn`).

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../datasets");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the workspace's datasets/ folder")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
        .collect();
    names.sort();
    let mut out = String::from("/// `(name, text)` of every recipe in `datasets/` when this binary was built.\npub static BUILT_IN: &[(&str, &str)] = &[\n");
    for n in &names {
        let path = dir.join(format!("{n}.toml")).canonicalize().unwrap();
        writeln!(out, "    ({n:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("recipes.rs");
    std::fs::write(dest, out).unwrap();
}
