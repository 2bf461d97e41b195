//! With the `tch` feature, the binaries and test executables find libtorch where they were
//! built against it (the project's `.venv` torch wheel) through an rpath, so no one has to set
//! LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
