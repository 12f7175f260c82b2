//! The XDP program, built by `build.rs` and embedded in this binary.

/// The XDP object file (BPF ELF with BTF), aligned so aya can parse it in place.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-xdp"));

#[cfg(test)]
mod tests {
    use super::XDP_OBJECT;
    use aya::programs::Xdp;

    /// Loads the embedded object into the kernel: the maps are created and the program passes the
    /// verifier. Needs root (CI and the dev machines run as root).
    #[test]
    fn embedded_program_passes_the_verifier() {
        let mut ebpf = aya::Ebpf::load(XDP_OBJECT).expect("parse and create maps");
        assert!(ebpf.map(sluice_common::VERDICTS_MAP).is_some(), "verdict counters missing");
        let prog: &mut Xdp = ebpf
            .program_mut(sluice_common::XDP_PROGRAM)
            .expect("program in object")
            .try_into()
            .expect("an XDP program");
        prog.load().expect("verifier accepts the program");
    }
}
