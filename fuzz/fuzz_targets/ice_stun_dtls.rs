//! ICE-lite: Binding-request checks and the agent (nomination, consent) on arbitrary datagrams,
//! and DTLS record framing. The first byte picks the source address, so rebinding paths run.
#![no_main]
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use sluice_core::ice::{self, IceAgent, IceConfig};
use sluice_core::table::IceCredentials;
use sluice_core::time::Instant;

fuzz_target!(|data: &[u8]| {
    let _ = ice::dtls_records(data);
    let creds = IceCredentials { ufrag: "sl".into(), pwd: "pppppppppppppppppppppp".into() };
    let _ = ice::check_request(data, &creds, Some("br"));
    let mut agent = IceAgent::new(creds, None, IceConfig::default());
    let mut out = [0u8; ice::MAX_RESPONSE];
    for (i, chunk) in data.chunks(64).enumerate() {
        let from = SocketAddr::from(([10, 0, 0, chunk.first().copied().unwrap_or(0) % 4], 5000));
        let now = Instant::from_nanos(i as u64 * 1_000_000_000);
        if let Ok(n) = agent.handle_stun(now, from, chunk, &mut out) {
            assert!(n <= ice::MAX_RESPONSE);
        }
        agent.handle_timeout(now);
        while agent.poll_event().is_some() {}
    }
});
