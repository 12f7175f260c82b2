//! The WebRTC parts of a leg: the peer's ICE credentials and DTLS parameters from the request,
//! Sluice's own credentials (derived from the node secret) and the answer's candidate.

use super::*;

/// Whether `s` is 4..=256 (ufrag) or 22..=256 (pwd) ice-chars (RFC 8839 §5.4: ALPHA / DIGIT /
/// "+" / "/").
pub(super) fn ice_chars(s: &str, min: usize) -> bool {
    (min..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The peer's side of a WebRTC leg, validated.
pub(super) fn webrtc_remote(f: &str, w: &pb::WebRtc) -> Result<(IceCredentials, DtlsRole, String), StateError> {
    if !ice_chars(&w.remote_ice_ufrag, 4) {
        return Err(invalid(format!("{f}.remote_ice_ufrag"), "must be 4 to 256 ice-chars (letters, digits, '+', '/')"));
    }
    if !ice_chars(&w.remote_ice_pwd, 22) {
        return Err(invalid(format!("{f}.remote_ice_pwd"), "must be 22 to 256 ice-chars (letters, digits, '+', '/')"));
    }
    if w.remote_fingerprint.len() > MAX_FINGERPRINT_LEN || sluice_api::parse_fingerprint(&w.remote_fingerprint).is_none() {
        return Err(invalid(
            format!("{f}.remote_fingerprint"),
            format!("{} is not \"<sha-1|sha-256|sha-384|sha-512> AB:CD:...\" with the hash's length", quote(&w.remote_fingerprint)),
        ));
    }
    let role = match pb::DtlsSetup::try_from(w.setup) {
        Ok(pb::DtlsSetup::Passive) => DtlsRole::Server,
        Ok(pb::DtlsSetup::Active) => DtlsRole::Client,
        _ => return Err(invalid(format!("{f}.setup"), "must be DTLS_SETUP_PASSIVE or DTLS_SETUP_ACTIVE")),
    };
    let remote = IceCredentials { ufrag: w.remote_ice_ufrag.clone(), pwd: w.remote_ice_pwd.clone() };
    Ok((remote, role, w.remote_fingerprint.trim().to_owned()))
}

/// Sluice's ICE credentials on a leg: HMAC-SHA256 of the node secret over the leg id and the
/// peer's ufrag, so they are unique per leg, change on an ICE restart (a new peer ufrag), and a
/// journal replay derives the same ones. 8 hex digits of ufrag, 32 of password.
pub fn local_ice_credentials(secret: &[u8], leg: LegId, remote: &IceCredentials) -> IceCredentials {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut msg = leg.0.to_be_bytes().to_vec();
    msg.extend_from_slice(remote.ufrag.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, &msg);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    IceCredentials { ufrag: hex[..8].to_owned(), pwd: hex[8..40].to_owned() }
}

/// Where WebRTC peers reach the dataplane and what its certificate is, for [`webrtc_local`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EdgeInfo {
    /// The address candidates announce.
    pub ip: Option<std::net::IpAddr>,
    /// The dataplane's DTLS certificate fingerprint (empty while unknown).
    pub fingerprint: String,
    /// The dataplane's ICE-TCP port (RFC 6544 passive candidate), when it has one.
    pub ice_tcp_port: Option<u16>,
}

/// Sluice's side of a WebRTC leg: its host candidate, ICE credentials, fingerprint and role.
pub fn webrtc_local(leg: &LegSpec, info: &EdgeInfo) -> Option<pb::WebRtcLocal> {
    let e = leg.edge.as_ref()?;
    let mut candidates: Vec<pb::IceCandidate> = info
        .ip
        .map(|ip| pb::IceCandidate {
            // RFC 8445 §5.1.2.1 host priority: type preference 126, local preference 65535,
            // component 1.
            candidate: format!("candidate:1 1 udp 2130706431 {ip} {} typ host", leg.local_port),
            ip: ip.to_string(),
            port: u32::from(leg.local_port),
        })
        .into_iter()
        .collect();
    // RFC 6544: the node's passive TCP candidate, below UDP (local preference 0x5a00 of the
    // TCP range), for peers that cannot send UDP. One port for every leg: the first check's
    // USERNAME says which leg a connection is for.
    if let (Some(ip), Some(port)) = (info.ip, info.ice_tcp_port) {
        candidates.push(pb::IceCandidate {
            candidate: format!("candidate:2 1 tcp 1518280447 {ip} {port} typ host tcptype passive"),
            ip: ip.to_string(),
            port: u32::from(port),
        });
    }
    Some(pb::WebRtcLocal {
        ice_ufrag: e.local.ufrag.clone(),
        ice_pwd: e.local.pwd.clone(),
        fingerprint: info.fingerprint.clone(),
        candidates,
        setup: match e.role {
            DtlsRole::Server => pb::DtlsSetup::Passive,
            DtlsRole::Client => pb::DtlsSetup::Active,
        } as i32,
    })
}
