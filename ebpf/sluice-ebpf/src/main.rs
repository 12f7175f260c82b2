//! Sluice's XDP first stage. This first cut counts what it sees and passes everything; the shield,
//! demultiplexing, steering and relay come with the XDP issue.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext};
use sluice_common::XdpVerdict;

#[map(name = "SLUICE_VERDICTS")]
static SLUICE_VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpVerdict::COUNT, 0);

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    match try_sluice_xdp(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

fn count(verdict: XdpVerdict) {
    if let Some(counter) = SLUICE_VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: the per-CPU slot belongs to this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

fn try_sluice_xdp(_ctx: &XdpContext) -> Result<u32, u32> {
    count(XdpVerdict::PassNotMedia);
    Ok(xdp_action::XDP_PASS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
