//! Builds the XDP program (`ebpf/sluice-ebpf`) for bpfel-unknown-none on the nightly with
//! aya-build, so `src/xdp.rs` can embed the object with `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata.packages.iter().find(|p| p.name.as_str() == "sluice-ebpf").ok_or_else(|| anyhow!("sluice-ebpf package not found in the workspace"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf([aya_build::Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }], aya_build::Toolchain::default())
        .context("building the XDP program (run scripts/setup.sh for the nightly and bpf-linker)")
}
