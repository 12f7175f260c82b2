//! No key material in snapshots unless the owner asks (issue 15, item 7): a snapshot of the
//! dataplane's tables read over its control socket shows each leg's SRTP key material only as a
//! digest, unless the request asks for keys, which only root and the dataplane's own uid may do;
//! the control plane's resync compares digests, so it keeps working without ever reading keys.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use sluice_api::{Request, Response, read_frame, write_frame};
use sluice_controlplane::pb;
use sluice_controlplane::pb::change::Change as C;
use sluice_core::srtp::Profile;
use sluice_core::table::{KeyDigest, KeyMaterial, Op};
use sluice_tests::TempDir;

mod cp;
use cp::{Grpc, session_req, start_controlplane_with, start_dataplane_in, wait_until};

const PORTS: (u16, u16) = (33_620, 33_639);

/// The raw body of the answer to a snapshot request, and the snapshot in it.
fn snapshot(sock: &std::path::Path, keys: bool) -> (String, Vec<Op>) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut s, &Request::Hello { version: sluice_api::PROTOCOL_VERSION }).unwrap();
    let hello: Option<Response> = read_frame(&mut s).unwrap();
    assert!(matches!(hello, Some(Response::Hello { .. })), "{hello:?}");
    write_frame(&mut s, &Request::Snapshot { keys }).unwrap();
    let mut len = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut len).unwrap();
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    std::io::Read::read_exact(&mut s, &mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    let Response::Snapshot(d) = serde_json::from_str(&body).unwrap() else { panic!("no snapshot: {body}") };
    (body, d.ops)
}

/// The key material of every leg of a change set, as the dataplane gets it.
fn request_keys(req: &pb::ChangeSet) -> Vec<KeyMaterial> {
    let profile = |p: i32| match pb::SrtpProfile::try_from(p).unwrap() {
        pb::SrtpProfile::AeadAes128Gcm => Profile::AeadAes128Gcm,
        other => panic!("the fixture uses AEAD-AES-128-GCM, not {other:?}"),
    };
    let mut keys = Vec::new();
    for c in &req.changes {
        if let Some(C::Leg(l)) = &c.change {
            for k in [&l.rx, &l.tx].into_iter().flatten() {
                keys.push(KeyMaterial::new(profile(k.profile), k.key.clone(), k.salt.clone()));
            }
        }
    }
    assert!(!keys.is_empty());
    keys
}

fn leg_keys(ops: &[Op]) -> Vec<KeyMaterial> {
    ops.iter().filter_map(|o| if let Op::UpsertLeg(l) = o { Some([l.rx.clone(), l.tx.clone()]) } else { None }).flatten().collect()
}

fn sorted_digests(keys: &[KeyMaterial]) -> Vec<KeyDigest> {
    let mut d: Vec<KeyDigest> = keys.iter().map(|k| k.redacted().digest.unwrap()).collect();
    d.sort_by_key(|d| d.0);
    d
}

/// Before: `Snapshot` served every leg's master key and salt to any peer of the socket. Now a
/// snapshot without the flag carries none of the key bytes (only digests, which match the
/// applied keys'), one with the flag from root carries them all; and a control plane restarted
/// against the running dataplane resyncs by digest (nothing differs, nothing is resent) and
/// its next Apply is installed with the earlier session's keys untouched.
#[test]
fn a_snapshot_shows_keys_only_when_the_owner_asks() {
    let dir = TempDir::new("cp-snapshot-keys");
    let (_dataplane, dp_sock) = start_dataplane_in(dir.path(), PORTS);
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 1, PORTS);
    let mut grpc = Grpc::connect(addr);
    let req = session_req("keys");
    let applied = request_keys(&req);
    grpc.apply(req).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));

    let (body, ops) = snapshot(&dp_sock, false);
    for k in &applied {
        for bytes in [&k.key, &k.salt] {
            let json = serde_json::to_string(bytes).unwrap();
            assert!(!body.contains(&json), "key bytes {json} in a snapshot taken without keys");
        }
    }
    let shown = leg_keys(&ops);
    assert!(shown.iter().all(|k| k.key.is_empty() && k.salt.is_empty()), "{shown:?}");
    assert_eq!(sorted_digests(&shown), sorted_digests(&applied), "each leg's digest is that of its keys");

    let (body, ops) = snapshot(&dp_sock, true);
    for k in &applied {
        assert!(body.contains(&serde_json::to_string(&k.key).unwrap()), "the owner asked for keys");
    }
    let mut with_keys = leg_keys(&ops);
    let mut expected = applied.clone();
    for v in [&mut with_keys, &mut expected] {
        v.sort_by(|a, b| (&a.key, &a.salt).cmp(&(&b.key, &b.salt)));
    }
    assert_eq!(with_keys, expected);

    // The control plane never needs the keys back: restarted against the running dataplane, it
    // finds nothing differing, and its next Apply leaves the first session's keys as they were.
    cp.signal(libc::SIGKILL);
    drop(cp);
    let (cp, addr) = start_controlplane_with(dir.path(), &dp_sock, 2, PORTS);
    wait_until("the resync", Duration::from_secs(20), || cp.log_text().contains("dataplane resynced"));
    let log = cp.log_text();
    let line = log.lines().find(|l| l.contains("dataplane resynced")).unwrap();
    assert!(line.contains("differing=0") && line.contains("ops=0"), "the digests matched, nothing was resent: {line}");
    let mut grpc = Grpc::connect(addr);
    let second = session_req("second");
    let second_keys = request_keys(&second);
    grpc.apply(second).unwrap_or_else(|e| panic!("{e:?}\n{}", cp.log_text()));
    let (_, ops) = snapshot(&dp_sock, true);
    let mut installed = leg_keys(&ops);
    let mut expected: Vec<KeyMaterial> = applied.into_iter().chain(second_keys).collect();
    for v in [&mut installed, &mut expected] {
        v.sort_by(|a, b| (&a.key, &a.salt).cmp(&(&b.key, &b.salt)));
    }
    assert_eq!(installed, expected, "both sessions' keys are installed");
}
