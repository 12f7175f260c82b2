//! TURN server: arbitrary datagrams from a few 5-tuples (UDP, TCP, IPv6) and from peers into
//! one server, over time; chunks are split at 0xFE, and the first two bytes of each pick the
//! source, client or peer side, the clock step and a sweep. The fuzzer cannot forge
//! MESSAGE-INTEGRITY, so it covers parsing, the 401/400/420/438 paths, ChannelData and Send
//! indications without an allocation, and the peer path; the authenticated paths under mutated
//! input are covered by the seeded `turn::tests::random_input_never_panics` unit test. Must never
//! panic.
#![no_main]
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use sluice_core::time::Instant;
use sluice_core::turn::{self, AddressFamily, FiveTuple, Now, RelayAllocator, Server, ServerConfig, Transport};

struct Pool(u16);

impl RelayAllocator for Pool {
    fn allocate(&mut self, _: &FiveTuple, family: AddressFamily) -> Option<SocketAddr> {
        self.0 = self.0.wrapping_add(1);
        let ip: std::net::IpAddr = if family == AddressFamily::V4 { [198, 51, 100, 1].into() } else { "2001:db8::1".parse().ok()? };
        (self.0 % 5 != 0).then_some(SocketAddr::new(ip, self.0))
    }
    fn release(&mut self, _: SocketAddr) {}
}

fuzz_target!(|data: &[u8]| {
    let mut cfg = ServerConfig::new("fuzz.test", b"secret".to_vec(), [1; 32]);
    cfg.max_allocations = 3;
    cfg.max_allocations_per_user = 2;
    cfg.max_permissions = 4;
    cfg.max_channels = 4;
    cfg.policy.allow = vec!["8.8.8.0/24".parse().unwrap()];
    cfg.policy.denied_endpoints = vec!["0.0.0.0:9090".parse().unwrap()];
    let Ok(mut server) = Server::new(cfg, Pool(0)) else { return };
    server.add_own_leg(SocketAddr::from(([203, 0, 113, 10], 40000)));
    let tuples = [
        FiveTuple { client: SocketAddr::from(([192, 0, 2, 1], 1000)), server: SocketAddr::from(([192, 0, 2, 100], 3478)), transport: Transport::Udp },
        FiveTuple { client: SocketAddr::from(([192, 0, 2, 2], 1000)), server: SocketAddr::from(([192, 0, 2, 100], 3478)), transport: Transport::Tcp },
        FiveTuple { client: "[2001:db8::7]:1000".parse().unwrap(), server: "[2001:db8::100]:3478".parse().unwrap(), transport: Transport::Udp },
    ];
    let peers: [SocketAddr; 3] = [SocketAddr::from(([203, 0, 113, 10], 40000)), SocketAddr::from(([8, 8, 8, 8], 53)), SocketAddr::from(([10, 0, 0, 1], 1))];
    let mut out = [0u8; turn::MAX_RESPONSE];
    let mut peer_out = [0u8; 2048];
    let mut nanos = 0u64;
    for chunk in data.split(|&b| b == 0xFE) {
        let &[sel, step, ref body @ ..] = chunk else { continue };
        nanos = nanos.saturating_add(u64::from(step) * 10_000_000_000);
        let now = Now { mono: Instant::from_nanos(nanos), unix_secs: 1_700_000_000 + nanos / 1_000_000_000 };
        let tuple = tuples[usize::from(sel % 3)];
        if sel & 0x80 == 0 {
            if let turn::ClientAction::Reply(n) = server.handle_client(now, tuple, body, &mut out) {
                assert!(n <= out.len());
            }
        } else {
            let relayed = SocketAddr::from(([198, 51, 100, 1], u16::from(sel & 0x07)));
            let _ = server.handle_peer(now.mono, relayed, peers[usize::from((sel >> 3) % 3)], body, &mut peer_out);
        }
        if sel & 0x40 != 0 {
            server.handle_timeout(now.mono);
        }
        let _ = server.poll_timeout();
    }
});
