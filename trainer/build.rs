//! With the `tch` feature: compiles `csrc/aten_ops.cpp` and `csrc/attention.cpp` (ATen
//! operators tch does not bind, see `src/kernels/libtorch.rs`) against the libtorch that
//! torch-sys found, and gives the binaries and test executables an rpath to that libtorch (the
//! project's `.venv` torch wheel), so no one has to set LD_LIBRARY_PATH.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/aten_ops.cpp");
    println!("cargo:rerun-if-changed=csrc/attention.cpp");
    println!("cargo:rerun-if-changed=csrc/error_message.h");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    // torch-sys (links = "tch") reports where the libtorch it linked lives.
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports DEP_TCH_LIBTORCH_LIB"));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let root = lib.parent().expect("libtorch's lib folder has a parent");
    // The same C++ ABI torch-sys builds its own wrapper with (its default is the new ABI, which
    // the PyPI wheels use).
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/aten_ops.cpp")
        .file("csrc/attention.cpp")
        .include(root.join("include"))
        // The autograd headers attention.cpp includes live beside the C++ API's.
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("aten_ops");
}
