//! Rebuild the program when the bpf-linker binary changes: the link step depends on it, and cargo
//! cannot express a dependency on a binary.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
