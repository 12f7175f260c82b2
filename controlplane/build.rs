//! Generates the gRPC services from `proto/sluice/v1/*.proto` with Debian's `protoc`, plus the
//! file descriptor set that server reflection serves.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = ["sluice/v1/routes.proto", "sluice/v1/node.proto"].map(|f| root.join(f));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("sluice_descriptor.bin")).compile_protos(&files, std::slice::from_ref(&root))?;
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
