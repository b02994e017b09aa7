//! With the `tch` feature: embeds LibTorch's library folder as an rpath, so the binary runs
//! without LD_LIBRARY_PATH. torch-sys (a direct dependency for this reason) reports the folder.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
