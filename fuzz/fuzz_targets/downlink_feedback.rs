//! Transport-cc feedback from a subscriber, of any shape, into a leg's send history and
//! estimator (and the receiver-side recorder that writes it): dropped and counted or used, never
//! a panic, and the estimate stays within the estimator's bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_core::downlink::Downlink;
use sluice_core::ids::Ssrc;
use sluice_core::time::Instant;
use sluice_core::uplink::TwccRecorder;
use sluice_core::wire::rtcp::{TransportCc, compound};

fuzz_target!(|data: &[u8]| {
    let Some((&sent, rest)) = data.split_first() else { return };
    let mut dl = Downlink::default();
    // Some packets sent, 1 ms apart, from a sequence number the input picks.
    for i in 0..u64::from(sent) * 4 {
        dl.sent(Instant::from_nanos(i * 1_000_000), 1200, i % 7 == 0);
    }
    let now = Instant::from_nanos(1_000_000_000);
    for pkt in compound(rest).flatten() {
        if let Ok(fb) = TransportCc::new_checked(pkt.as_bytes()) {
            let _ = dl.on_feedback(now, &fb);
            let e = dl.estimate();
            assert!((50_000..=50_000_000).contains(&e), "{e}");
        }
    }
    // The recorder takes any sequence numbers and arrival times, and what it writes decodes.
    let mut rec = TwccRecorder::default();
    for c in rest.chunks(4) {
        if let [a, b, t0, t1] = *c {
            rec.record(u16::from_be_bytes([a, b]), Instant::from_nanos(u64::from(u16::from_be_bytes([t0, t1])) * 1_000_000));
        }
    }
    let mut buf = [0u8; 1500];
    while let Ok(Some(n)) = rec.write_feedback(&mut buf, Ssrc(1), Ssrc(2)) {
        let fb = TransportCc::new_checked(&buf[..n]).expect("what the recorder writes parses");
        assert!(fb.packets().all(|p| p.is_ok()));
    }
});
