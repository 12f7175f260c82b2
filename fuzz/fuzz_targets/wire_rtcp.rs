//! RTCP compound walk and every typed view on every packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_core::wire::rtcp;

fuzz_target!(|data: &[u8]| {
    let mut total = 0;
    for pkt in rtcp::compound(data) {
        let Ok(pkt) = pkt else { break };
        total += pkt.as_bytes().len();
        let b = pkt.as_bytes();
        let _ = pkt.kind();
        if let Ok(sr) = rtcp::SenderReport::new_checked(b) {
            let _ = (sr.sender_info(), sr.report_blocks().map(|r| r.info()).count());
        }
        if let Ok(rr) = rtcp::ReceiverReport::new_checked(b) {
            let _ = rr.report_blocks().map(|r| r.info()).count();
        }
        if let Ok(sdes) = rtcp::Sdes::new_checked(b) {
            for c in sdes.chunks() {
                let _ = c.cname();
                let _ = c.items().count();
            }
        }
        if let Ok(bye) = rtcp::Bye::new_checked(b) {
            let _ = (bye.ssrcs().count(), bye.reason());
        }
        if let Ok(app) = rtcp::App::new_checked(b) {
            let _ = (app.name(), app.data().len());
        }
        if let Ok(nack) = rtcp::Nack::new_checked(b) {
            let _ = nack.sequence_numbers().count();
        }
        if let Ok(twcc) = rtcp::TransportCc::new_checked(b) {
            let _ = (twcc.base_sequence_number(), twcc.packet_status_count(), twcc.chunks_and_deltas().len());
        }
        if let Ok(fir) = rtcp::Fir::new_checked(b) {
            let _ = fir.entries().count();
        }
        if let Ok(remb) = rtcp::Remb::new_checked(b) {
            let _ = (remb.bitrate(), remb.ssrcs().count());
        }
        let _ = rtcp::Pli::new_checked(b);
    }
    assert!(total <= data.len());
    let mut copy = data.to_vec();
    for pkt in rtcp::compound_mut(&mut copy) {
        if pkt.is_err() {
            break;
        }
    }
});
