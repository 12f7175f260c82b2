//! The server driven end to end by a tiny TURN client written here (it builds requests with the
//! same STUN helpers ICE-lite uses and checks every response's integrity and fingerprint), on a
//! virtual clock; plus the RFC 5769 long-term credential vector and the deframers.

use std::net::SocketAddr;

use super::credentials::parse_rest_username;
use super::server::integrity_ok;
use super::*;
use crate::ice::{self, ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, ATTR_USERNAME, ATTR_XOR_MAPPED_ADDRESS};
use crate::time::Instant;
use crate::wire::stun::{self, Class, HEADER_LEN, METHOD_BINDING, Message};

const SECRET: &[u8] = b"current-secret";
const OLD_SECRET: &[u8] = b"previous-secret";
const REALM: &str = "sluice.test";
const UNIX0: u64 = 1_700_000_000;
/// One of Sluice's legs (a public address: TEST-NET-3).
const LEG: &str = "203.0.113.10:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn at(secs: u64) -> Now {
    Now { mono: Instant::from_nanos(secs * 1_000_000_000), unix_secs: UNIX0 + secs }
}

#[derive(Debug, Default)]
struct Pool {
    next: u16,
    exhausted: bool,
    released: Vec<SocketAddr>,
}

impl RelayAllocator for Pool {
    fn allocate(&mut self, _client: &FiveTuple, family: AddressFamily) -> Option<SocketAddr> {
        if self.exhausted {
            return None;
        }
        self.next += 1;
        let ip = match family {
            AddressFamily::V4 => "198.51.100.1".parse().unwrap(),
            AddressFamily::V6 => "2001:db8::1".parse().unwrap(),
        };
        Some(SocketAddr::new(ip, 50_000 + self.next))
    }

    fn release(&mut self, relayed: SocketAddr) {
        self.released.push(relayed);
    }
}

fn config() -> ServerConfig {
    let mut c = ServerConfig::new(REALM, SECRET, [7; 32]);
    c.previous_secret = Some(OLD_SECRET.to_vec());
    c.software = Some("sluice-test".into());
    c.policy.denied_endpoints = vec![addr("0.0.0.0:9090")];
    c.max_allocations = 4;
    c.max_allocations_per_user = 2;
    c
}

fn server() -> Server<Pool> {
    let mut s = Server::new(config(), Pool::default()).unwrap();
    s.add_own_leg(addr(LEG));
    s
}

/// A response, parsed by the test client.
#[derive(Debug)]
struct Resp(Vec<u8>);

impl Resp {
    fn msg(&self) -> Message<&[u8]> {
        Message::new_checked(&self.0[..]).unwrap()
    }
    fn class(&self) -> Class {
        self.msg().class()
    }
    fn code(&self) -> Option<u16> {
        self.attr(ATTR_ERROR_CODE).map(|v| u16::from(v[2]) * 100 + u16::from(v[3]))
    }
    fn attr(&self, kind: u16) -> Option<Vec<u8>> {
        self.msg().find_attribute(kind).map(<[u8]>::to_vec)
    }
    fn xor(&self, kind: u16) -> Option<SocketAddr> {
        stun::decode_xor_address(&self.attr(kind)?, &self.msg().transaction_id())
    }
    fn lifetime(&self) -> Option<u32> {
        self.attr(ATTR_LIFETIME).map(|v| u32::from_be_bytes(v[..4].try_into().unwrap()))
    }
    fn signed_by(&self, key: &[u8; 16]) -> bool {
        let m = self.msg();
        m.attributes().map(Result::unwrap).find(|a| a.kind == ATTR_MESSAGE_INTEGRITY).is_some_and(|a| integrity_ok(&self.0, a.offset, a.value, key))
    }
    fn is_signed(&self) -> bool {
        self.attr(ATTR_MESSAGE_INTEGRITY).is_some()
    }
    fn fingerprint_ok(&self) -> bool {
        let m = self.msg();
        let last = m.attributes().map(Result::unwrap).last().unwrap();
        last.kind == ATTR_FINGERPRINT
            && last.value == (ice::crc_with_len(&self.0, last.offset, (self.0.len() - HEADER_LEN) as u16) ^ ice::FINGERPRINT_XOR).to_be_bytes()
    }
}

/// The tiny TURN client.
struct Client {
    ft: FiveTuple,
    username: String,
    password: String,
    nonce: Option<Vec<u8>>,
    seq: u32,
}

type Attrs = Vec<(u16, Vec<u8>)>;

fn xor_value(a: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let mut v = [0u8; 20];
    let n = stun::encode_xor_address(a, tid, &mut v);
    v[..n].to_vec()
}

fn u32_attr(kind: u16, v: u32) -> (u16, Vec<u8>) {
    (kind, v.to_be_bytes().to_vec())
}

fn udp_transport() -> (u16, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![TRANSPORT_UDP, 0, 0, 0])
}

impl Client {
    fn new(client: &str, transport: Transport) -> Self {
        Self::with_user(client, transport, "alice", UNIX0 + 86_400, SECRET)
    }

    fn with_user(client: &str, transport: Transport, user: &str, expiry: u64, secret: &[u8]) -> Self {
        let (username, password) = rest_api_credentials(secret, user, expiry);
        let ft = FiveTuple { client: addr(client), server: addr("192.0.2.100:3478"), transport };
        Self { ft, username, password, nonce: None, seq: 0 }
    }

    fn key(&self) -> [u8; 16] {
        long_term_key(self.username.as_bytes(), REALM.as_bytes(), self.password.as_bytes())
    }

    fn tid(&mut self) -> [u8; 12] {
        self.seq += 1;
        let mut t = [0xA5u8; 12];
        t[8..].copy_from_slice(&self.seq.to_be_bytes());
        t
    }

    /// A message of `method`/`class` with the attributes `f` gives for its transaction id;
    /// signed with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY when `sign`; FINGERPRINT last.
    fn build(&mut self, method: u16, class: Class, sign: bool, f: impl FnOnce(&[u8; 12]) -> Attrs) -> Vec<u8> {
        let tid = self.tid();
        self.build_with(tid, method, class, sign, f)
    }

    fn build_with(&self, tid: [u8; 12], method: u16, class: Class, sign: bool, f: impl FnOnce(&[u8; 12]) -> Attrs) -> Vec<u8> {
        let mut out = vec![0u8; 2048];
        ice::header(&mut out, stun::message_type(method, class), &tid).unwrap();
        let mut len = HEADER_LEN;
        let mut attrs = f(&tid);
        if sign {
            attrs.push((ATTR_USERNAME, self.username.as_bytes().to_vec()));
            attrs.push((ATTR_REALM, REALM.as_bytes().to_vec()));
            attrs.push((ATTR_NONCE, self.nonce.clone().unwrap_or_default()));
        }
        for (kind, value) in attrs {
            len = ice::put_attr(&mut out, len, kind, &value).unwrap();
        }
        if sign {
            len = ice::append_integrity(&mut out, len, &self.key()).unwrap();
        }
        len = ice::append_fingerprint(&mut out, len).unwrap();
        out.truncate(len);
        out
    }

    fn send(&mut self, s: &mut Server<Pool>, now: Now, msg: &[u8]) -> Resp {
        let mut out = [0u8; MAX_RESPONSE];
        match s.handle_client(now, self.ft, msg, &mut out) {
            ClientAction::Reply(n) => {
                let r = Resp(out[..n].to_vec());
                assert!(r.fingerprint_ok(), "every response carries a valid FINGERPRINT");
                assert_eq!(r.msg().transaction_id(), Message::new_checked(msg).unwrap().transaction_id());
                if let Some(n) = r.attr(ATTR_NONCE) {
                    self.nonce = Some(n);
                }
                r
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn request(&mut self, s: &mut Server<Pool>, now: Now, method: u16, f: impl FnOnce(&[u8; 12]) -> Attrs) -> Resp {
        let m = self.build(method, Class::Request, true, f);
        self.send(s, now, &m)
    }

    /// A request as a real client sends it: once more with the new nonce after a 438.
    fn retrying(&mut self, s: &mut Server<Pool>, now: Now, method: u16, f: impl Fn(&[u8; 12]) -> Attrs) -> Resp {
        let r = self.request(s, now, method, &f);
        if r.code() == Some(438) { self.request(s, now, method, f) } else { r }
    }

    /// The first, unauthenticated Allocate (401 with REALM and NONCE), then the signed one.
    fn allocate(&mut self, s: &mut Server<Pool>, now: Now) -> Resp {
        let m = self.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
        let r = self.send(s, now, &m);
        assert_eq!((r.class(), r.code()), (Class::ErrorResponse, Some(401)));
        assert_eq!(r.attr(ATTR_REALM).as_deref(), Some(REALM.as_bytes()));
        assert!(!r.is_signed() && self.nonce.is_some());
        let r = self.request(s, now, METHOD_ALLOCATE, |_| vec![udp_transport()]);
        assert_eq!(r.class(), Class::SuccessResponse, "{:?}", r.code());
        assert!(r.signed_by(&self.key()));
        r
    }

    fn permit(&mut self, s: &mut Server<Pool>, now: Now, peer: SocketAddr) -> Resp {
        self.retrying(s, now, METHOD_CREATE_PERMISSION, |t| vec![(ATTR_XOR_PEER_ADDRESS, xor_value(peer, t))])
    }

    fn bind(&mut self, s: &mut Server<Pool>, now: Now, number: u16, peer: SocketAddr) -> Resp {
        self.retrying(s, now, METHOD_CHANNEL_BIND, |t| {
            vec![u32_attr(ATTR_CHANNEL_NUMBER, u32::from(number) << 16), (ATTR_XOR_PEER_ADDRESS, xor_value(peer, t))]
        })
    }

    fn refresh(&mut self, s: &mut Server<Pool>, now: Now, lifetime: u32) -> Resp {
        self.retrying(s, now, METHOD_REFRESH, |_| vec![u32_attr(ATTR_LIFETIME, lifetime)])
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        self.build(METHOD_SEND, Class::Indication, false, |t| vec![(ATTR_XOR_PEER_ADDRESS, xor_value(peer, t)), (ATTR_DATA, data.to_vec())])
    }
}

fn relay<'a>(s: &mut Server<Pool>, now: Now, c: &Client, msg: &'a [u8]) -> ClientAction<'a> {
    let mut out = [0u8; MAX_RESPONSE];
    s.handle_client(now, c.ft, msg, &mut out)
}

fn error(r: &Resp) -> (Class, Option<u16>) {
    (r.class(), r.code())
}

#[test]
fn rfc5769_long_term_credential_vector() {
    // RFC 5769 §2.4: USERNAME "マトリックス", password "The<U+00AD>M<U+00AA>tr<U+2168>", which
    // SASLprep maps to "TheMatrIX" (this crate has no SASLprep: REST API credentials are ASCII,
    // for which it is the identity; the prepared password is given here), NONCE
    // "f//499k954d6OL34oL9FSTvy64sA", REALM "example.org".
    const REQUEST: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3,
        0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f,
        0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
        0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65,
        0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];
    let m = Message::new_checked(&REQUEST[..]).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Request, METHOD_BINDING));
    let username = m.find_attribute(ATTR_USERNAME).unwrap();
    assert_eq!(core::str::from_utf8(username), Ok("マトリックス"));
    assert_eq!(m.find_attribute(ATTR_NONCE), Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..]));
    let realm = m.find_attribute(ATTR_REALM).unwrap();
    assert_eq!(realm, b"example.org");
    let mi = m.attributes().map(Result::unwrap).find(|a| a.kind == ATTR_MESSAGE_INTEGRITY).unwrap();
    let key = long_term_key(username, realm, b"TheMatrIX");
    assert!(integrity_ok(&REQUEST, mi.offset, mi.value, &key));
    // Unprepared password, or any flipped bit before the attribute: refused.
    assert!(!integrity_ok(&REQUEST, mi.offset, mi.value, &long_term_key(username, realm, "The\u{00AD}M\u{00AA}tr\u{2168}".as_bytes())));
    for i in 0..mi.offset {
        let mut b = REQUEST;
        b[i] ^= 0x10;
        if i == 2 || i == 3 {
            continue; // the length field is replaced in the HMAC input
        }
        assert!(!integrity_ok(&b, mi.offset, mi.value, &key), "byte {i}");
    }
}

#[test]
fn full_exchange_over_udp() {
    let mut s = server();
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    let leg = addr(LEG);
    // 401 → Allocate with credentials → relayed address, mapped address, default lifetime.
    let r = c.allocate(&mut s, at(0));
    let relayed = r.xor(ATTR_XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed, addr("198.51.100.1:50001"));
    assert_eq!(r.xor(ATTR_XOR_MAPPED_ADDRESS), Some(c.ft.client));
    assert_eq!(r.lifetime(), Some(600));
    assert_eq!(r.attr(ATTR_SOFTWARE).as_deref(), Some(&b"sluice-test"[..]));
    assert_eq!(s.refused(Refusal::Unauthenticated), 1);
    assert_eq!(s.relayed_address(&c.ft, at(0).mono), Some(relayed));
    // Send before any permission: dropped silently, counted.
    let ind = c.send_indication(leg, b"too early");
    assert_eq!(relay(&mut s, at(1), &c, &ind), ClientAction::Dropped(Refusal::NoPermission));
    assert_eq!(s.refused(Refusal::NoPermission), 1);
    // CreatePermission for our leg → Send indication → "send to peer" from the relayed address.
    let r = c.permit(&mut s, at(1), leg);
    assert_eq!(r.class(), Class::SuccessResponse);
    assert!(r.signed_by(&c.key()));
    let ind = c.send_indication(leg, b"hello peer");
    assert_eq!(relay(&mut s, at(2), &c, &ind), ClientAction::Relay { relayed, peer: leg, payload: b"hello peer" });
    // Peer → client without a channel: a Data indication.
    let mut out = [0u8; 1500];
    let PeerAction::ToClient { to, len } = s.handle_peer(at(3).mono, relayed, leg, b"hello client", &mut out) else { panic!() };
    assert_eq!(to, c.ft);
    let d = Message::new_checked(&out[..len]).unwrap();
    assert_eq!((d.class(), d.method()), (Class::Indication, METHOD_DATA));
    assert_eq!(stun::decode_xor_address(d.find_attribute(ATTR_XOR_PEER_ADDRESS).unwrap(), &d.transaction_id()), Some(leg));
    assert_eq!(d.find_attribute(ATTR_DATA), Some(&b"hello client"[..]));
    // A peer without a permission, or a relayed address without an allocation: dropped.
    assert_eq!(s.handle_peer(at(3).mono, relayed, addr("203.0.113.99:1"), b"x", &mut out), PeerAction::Dropped(Refusal::NoPermission));
    assert_eq!(s.handle_peer(at(3).mono, addr("198.51.100.1:1"), leg, b"x", &mut out), PeerAction::Dropped(Refusal::NoAllocation));
    // ChannelBind → ChannelData both ways (UDP: no padding).
    let r = c.bind(&mut s, at(4), 0x4000, leg);
    assert_eq!(r.class(), Class::SuccessResponse);
    let mut cd = [0u8; 64];
    let n = encode_channel_data(&mut cd, ChannelNumber::new(0x4000).unwrap(), b"media", false).unwrap();
    assert_eq!(relay(&mut s, at(5), &c, &cd[..n]), ClientAction::Relay { relayed, peer: leg, payload: b"media" });
    let PeerAction::ToClient { to, len } = s.handle_peer(at(5).mono, relayed, leg, b"back", &mut out) else { panic!() };
    assert_eq!((to, &out[..len]), (c.ft, &b"\x40\x00\x00\x04back"[..]));
    assert_eq!(s.peer_route(at(5).mono, relayed, leg), Ok(PeerRoute { to: c.ft, channel: ChannelNumber::new(0x4000) }));
    // An unbound channel number: dropped.
    let n = encode_channel_data(&mut cd, ChannelNumber::new(0x4001).unwrap(), b"media", false).unwrap();
    assert_eq!(relay(&mut s, at(5), &c, &cd[..n]), ClientAction::Dropped(Refusal::NoChannel));
    // Refresh 0 deletes the allocation and releases the relayed address.
    let r = c.refresh(&mut s, at(6), 0);
    assert_eq!((r.class(), r.lifetime()), (Class::SuccessResponse, Some(0)));
    assert!(r.signed_by(&c.key()));
    assert_eq!(s.allocator().released, [relayed]);
    assert_eq!(s.allocation_count(), 0);
    assert_eq!(relay(&mut s, at(7), &c, &ind), ClientAction::Dropped(Refusal::NoAllocation));
    assert_eq!(s.handle_peer(at(7).mono, relayed, leg, b"x", &mut out), PeerAction::Dropped(Refusal::NoAllocation));
    // Refresh without an allocation: 437.
    assert_eq!(error(&c.refresh(&mut s, at(8), 600)), (Class::ErrorResponse, Some(437)));
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_and_a_new_one_437() {
    let mut cfg = config();
    cfg.nonce_lifetime = core::time::Duration::from_secs(60);
    let mut s = Server::new(cfg, Pool::default()).unwrap();
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    let m = c.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    c.send(&mut s, at(0), &m);
    let m = c.build(METHOD_ALLOCATE, Class::Request, true, |_| vec![udp_transport()]);
    let first = c.send(&mut s, at(0), &m);
    assert_eq!(first.class(), Class::SuccessResponse);
    // The same transaction again, even after the nonce went stale: the same bytes.
    let again = c.send(&mut s, at(100), &m);
    assert_eq!(again.0, first.0);
    assert_eq!(s.allocator().next, 1, "no second relayed address");
    let r = c.request(&mut s, at(1), METHOD_ALLOCATE, |_| vec![udp_transport()]);
    assert_eq!(error(&r), (Class::ErrorResponse, Some(437)));
    // (with a fresh nonce: the one above is still good at t=1)
    assert!(r.signed_by(&c.key()));
    assert_eq!(s.refused(Refusal::AllocationMismatch), 1);
}

#[test]
fn allocate_error_codes() {
    let mut s = server();
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    c.allocate(&mut s, at(0));
    let mut d = Client::new("192.0.2.8:61000", Transport::Udp);
    let m = d.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![]);
    d.send(&mut s, at(0), &m);
    let cases: [(Attrs, u16, Refusal); 5] = [
        (vec![], 400, Refusal::BadRequest),
        (vec![(ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])], 442, Refusal::UnsupportedTransport),
        (vec![udp_transport(), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![3, 0, 0, 0])], 440, Refusal::AddressFamilyNotSupported),
        (vec![udp_transport(), (ATTR_LIFETIME, vec![0, 1])], 400, Refusal::BadRequest),
        (
            vec![udp_transport(), (ATTR_EVEN_PORT, vec![0x80]), (ATTR_DONT_FRAGMENT, vec![]), (ATTR_RESERVATION_TOKEN, vec![0; 8])],
            420,
            Refusal::UnknownAttribute,
        ),
    ];
    for (attrs, code, refusal) in cases {
        let before = s.refused(refusal);
        let r = d.request(&mut s, at(1), METHOD_ALLOCATE, |_| attrs);
        assert_eq!(error(&r), (Class::ErrorResponse, Some(code)));
        assert!(r.signed_by(&d.key()), "authenticated errors are signed");
        assert_eq!(s.refused(refusal), before + 1, "{refusal:?}");
        if code == 420 {
            assert_eq!(r.attr(ATTR_UNKNOWN_ATTRIBUTES), Some(vec![0x00, 0x18, 0x00, 0x1A, 0x00, 0x22]));
        }
    }
    // IPv6 relayed address on request.
    let r = d.request(&mut s, at(1), METHOD_ALLOCATE, |_| vec![udp_transport(), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])]);
    assert_eq!(r.xor(ATTR_XOR_RELAYED_ADDRESS).map(|a| a.is_ipv6()), Some(true));
    // Unknown method: 400, unsigned (nothing authenticated yet).
    let m = d.build(0x0FF, Class::Request, true, |_| vec![]);
    let r = d.send(&mut s, at(1), &m);
    assert_eq!(error(&r), (Class::ErrorResponse, Some(400)));
    // CreatePermission and ChannelBind without an allocation: 437.
    let mut e = Client::new("192.0.2.9:61000", Transport::Udp);
    e.nonce = d.nonce.clone();
    let m = e.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![]);
    e.send(&mut s, at(1), &m);
    assert_eq!(error(&e.permit(&mut s, at(1), addr(LEG))), (Class::ErrorResponse, Some(437)));
    assert_eq!(error(&e.bind(&mut s, at(1), 0x4000, addr(LEG))), (Class::ErrorResponse, Some(437)));
    // A Binding request is answered without authentication.
    let m = e.build(METHOD_BINDING, Class::Request, false, |_| vec![]);
    let r = e.send(&mut s, at(1), &m);
    assert_eq!((r.class(), r.xor(ATTR_XOR_MAPPED_ADDRESS)), (Class::SuccessResponse, Some(e.ft.client)));
    // Responses and stray indications are dropped.
    let m = e.build(METHOD_ALLOCATE, Class::SuccessResponse, false, |_| vec![]);
    assert_eq!(relay(&mut s, at(1), &e, &m), ClientAction::Dropped(Refusal::UnexpectedMessage));
    let m = e.build(METHOD_DATA, Class::Indication, false, |_| vec![]);
    assert_eq!(relay(&mut s, at(1), &e, &m), ClientAction::Dropped(Refusal::UnexpectedMessage));
}

#[test]
fn credentials_errors_401_438_441() {
    let mut s = server();
    // Wrong password (another secret): 401, unsigned, counted.
    let mut c = Client::with_user("192.0.2.7:61000", Transport::Udp, "alice", UNIX0 + 3600, b"not-the-secret");
    let m = c.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    c.send(&mut s, at(0), &m);
    let r = c.request(&mut s, at(0), METHOD_ALLOCATE, |_| vec![udp_transport()]);
    assert_eq!(error(&r), (Class::ErrorResponse, Some(401)));
    assert!(!r.is_signed() && r.attr(ATTR_NONCE).is_some());
    assert_eq!(s.refused(Refusal::BadCredentials), 1);
    // Expired REST username: 401, counted apart.
    let mut c = Client::with_user("192.0.2.7:61000", Transport::Udp, "alice", UNIX0 + 10, SECRET);
    c.nonce = Some(r.attr(ATTR_NONCE).unwrap());
    let r = c.request(&mut s, at(11), METHOD_ALLOCATE, |_| vec![udp_transport()]);
    assert_eq!(error(&r), (Class::ErrorResponse, Some(401)));
    assert_eq!(s.refused(Refusal::ExpiredCredentials), 1);
    // Not a REST username: 401.
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    c.nonce = Some(r.attr(ATTR_NONCE).unwrap());
    c.username = "alice".into();
    assert_eq!(error(&c.request(&mut s, at(11), METHOD_ALLOCATE, |_| vec![udp_transport()])), (Class::ErrorResponse, Some(401)));
    assert_eq!(s.refused(Refusal::BadCredentials), 2);
    // MESSAGE-INTEGRITY without NONCE: 400.
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    let m = c.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    let mut out = vec![0u8; 512];
    out[..m.len() - 8].copy_from_slice(&m[..m.len() - 8]);
    let n = ice::append_integrity(&mut out, m.len() - 8, &c.key()).unwrap();
    let n = ice::append_fingerprint(&mut out, n).unwrap();
    assert_eq!(error(&c.send(&mut s, at(12), &out[..n])), (Class::ErrorResponse, Some(400)));
    // Stale nonce (past its 600 s lifetime): 438 with a fresh nonce, signed (the request
    // verified); retrying with it succeeds.
    let m = c.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    c.send(&mut s, at(12), &m);
    let r = c.request(&mut s, at(700), METHOD_ALLOCATE, |_| vec![udp_transport()]);
    assert_eq!(error(&r), (Class::ErrorResponse, Some(438)));
    assert!(r.signed_by(&c.key()) && r.attr(ATTR_REALM).is_some());
    assert_eq!(s.refused(Refusal::StaleNonce), 1);
    assert_eq!(c.request(&mut s, at(700), METHOD_ALLOCATE, |_| vec![udp_transport()]).class(), Class::SuccessResponse);
    // A nonce issued to another client address is stale here too.
    let mut other = Client::new("192.0.2.8:61000", Transport::Udp);
    other.nonce = c.nonce.clone();
    assert_eq!(error(&other.request(&mut s, at(700), METHOD_ALLOCATE, |_| vec![udp_transport()])), (Class::ErrorResponse, Some(438)));
    // Another username on the same allocation: 441.
    let mut bob = Client::with_user("192.0.2.7:61000", Transport::Udp, "bob", UNIX0 + 3600, SECRET);
    bob.nonce = c.nonce.clone();
    let r = bob.refresh(&mut s, at(701), 600);
    assert_eq!(error(&r), (Class::ErrorResponse, Some(441)));
    assert!(r.signed_by(&bob.key()));
    // Credentials under the previous secret still work (rotation).
    let mut old = Client::with_user("192.0.2.10:61000", Transport::Udp, "carol", UNIX0 + 3600, OLD_SECRET);
    old.allocate(&mut s, at(701));
    // A wrong realm: 401.
    let mut c = Client::new("192.0.2.11:61000", Transport::Udp);
    c.nonce = old.nonce.clone();
    let m = c.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    c.send(&mut s, at(701), &m);
    let (user, nonce) = (c.username.clone().into_bytes(), c.nonce.clone().unwrap());
    let m = c.build(METHOD_ALLOCATE, Class::Request, false, |_| {
        vec![udp_transport(), (ATTR_USERNAME, user), (ATTR_REALM, b"evil.test".to_vec()), (ATTR_NONCE, nonce)]
    });
    let mut out = m[..m.len() - 8].to_vec();
    out.resize(m.len() + 64, 0);
    let n = ice::append_integrity(&mut out, m.len() - 8, &long_term_key(c.username.as_bytes(), b"evil.test", c.password.as_bytes())).unwrap();
    let n = ice::append_fingerprint(&mut out, n).unwrap();
    assert_eq!(error(&c.send(&mut s, at(701), &out[..n])), (Class::ErrorResponse, Some(401)));
    // A bad FINGERPRINT is dropped without an answer.
    let mut bad = m.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(relay(&mut s, at(701), &c, &bad), ClientAction::Dropped(Refusal::BadFingerprint));
}

#[test]
fn quotas_486_and_508() {
    let mut s = server();
    // max_allocations_per_user = 2, max_allocations = 4.
    let mut a1 = Client::new("192.0.2.1:1", Transport::Udp);
    let mut a2 = Client::new("192.0.2.1:2", Transport::Udp);
    let mut a3 = Client::new("192.0.2.1:3", Transport::Udp);
    a1.allocate(&mut s, at(0));
    a2.allocate(&mut s, at(0));
    let m = a3.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    a3.send(&mut s, at(0), &m);
    let r = a3.request(&mut s, at(0), METHOD_ALLOCATE, |_| vec![udp_transport()]);
    assert_eq!(error(&r), (Class::ErrorResponse, Some(486)));
    assert_eq!(s.refused(Refusal::UserQuota), 1);
    // A new expiry does not make a new user.
    let mut a4 = Client::with_user("192.0.2.1:4", Transport::Udp, "alice", UNIX0 + 99, SECRET);
    a4.nonce = a3.nonce.clone();
    let m = a4.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    a4.send(&mut s, at(0), &m);
    assert_eq!(error(&a4.request(&mut s, at(0), METHOD_ALLOCATE, |_| vec![udp_transport()])), (Class::ErrorResponse, Some(486)));
    // Freeing one lets the next in.
    a1.refresh(&mut s, at(1), 0);
    assert_eq!(a3.request(&mut s, at(1), METHOD_ALLOCATE, |_| vec![udp_transport()]).class(), Class::SuccessResponse);
    // Two other users fill the server to 4; the fifth allocation is 508.
    let mut b = Client::with_user("192.0.2.2:1", Transport::Udp, "bob", UNIX0 + 3600, SECRET);
    let mut c = Client::with_user("192.0.2.3:1", Transport::Udp, "carol", UNIX0 + 3600, SECRET);
    let mut d = Client::with_user("192.0.2.4:1", Transport::Udp, "dave", UNIX0 + 3600, SECRET);
    b.allocate(&mut s, at(2));
    c.allocate(&mut s, at(2));
    let m = d.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    d.send(&mut s, at(2), &m);
    assert_eq!(error(&d.request(&mut s, at(2), METHOD_ALLOCATE, |_| vec![udp_transport()])), (Class::ErrorResponse, Some(508)));
    // Expired allocations are swept to make room.
    assert_eq!(d.request(&mut s, at(601), METHOD_ALLOCATE, |_| vec![udp_transport()]).class(), Class::SuccessResponse);
    // The allocator running dry is 508 too.
    s.allocator_mut().exhausted = true;
    let mut e = Client::with_user("192.0.2.5:1", Transport::Udp, "erin", UNIX0 + 3600, SECRET);
    let m = e.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![]);
    e.send(&mut s, at(601), &m);
    assert_eq!(error(&e.request(&mut s, at(601), METHOD_ALLOCATE, |_| vec![udp_transport()])), (Class::ErrorResponse, Some(508)));
    assert_eq!(s.refused(Refusal::InsufficientCapacity), 2);
}

#[test]
fn no_open_relay() {
    let mut s = server();
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    let relayed = c.allocate(&mut s, at(0)).xor(ATTR_XOR_RELAYED_ADDRESS).unwrap();
    let forbidden = [
        ("10.0.0.1:5000", Refusal::PeerDeniedRange),
        ("[::ffff:10.0.0.1]:5000", Refusal::PeerDeniedRange),
        ("127.0.0.1:5000", Refusal::PeerDeniedRange),
        ("192.168.1.1:5000", Refusal::PeerDeniedRange),
        ("172.16.0.1:5000", Refusal::PeerDeniedRange),
        ("224.0.0.1:5000", Refusal::PeerDeniedRange),
        ("0.0.0.0:5000", Refusal::PeerDeniedRange),
        ("203.0.113.10:9090", Refusal::PeerControlPort),
        ("8.8.8.8:53", Refusal::PeerNotAllowed),
    ];
    for (peer, refusal) in forbidden {
        let before = s.refused(refusal);
        let r = c.permit(&mut s, at(1), addr(peer));
        assert_eq!(error(&r), (Class::ErrorResponse, Some(403)), "{peer}");
        assert!(r.signed_by(&c.key()));
        let r = c.bind(&mut s, at(1), 0x4000, addr(peer));
        assert_eq!(error(&r), (Class::ErrorResponse, Some(403)), "{peer}");
        assert_eq!(s.refused(refusal), before + 2, "{peer}: counted by reason");
    }
    assert_eq!(s.refused(Refusal::PeerDeniedRange), 14);
    assert_eq!(s.refused(Refusal::PeerControlPort), 2);
    assert_eq!(s.refused(Refusal::PeerNotAllowed), 2);
    // IPv6 peer on an IPv4 allocation: 443.
    assert_eq!(error(&c.permit(&mut s, at(1), addr("[2001:db8::5]:1"))), (Class::ErrorResponse, Some(443)));
    // A permission for our leg's IP does not open its other ports, nor the control port.
    c.permit(&mut s, at(1), addr(LEG));
    let ind = c.send_indication(addr("203.0.113.10:40001"), b"x");
    assert_eq!(relay(&mut s, at(2), &c, &ind), ClientAction::Dropped(Refusal::PeerNotAllowed));
    let ind = c.send_indication(addr("203.0.113.10:9090"), b"x");
    assert_eq!(relay(&mut s, at(2), &c, &ind), ClientAction::Dropped(Refusal::PeerControlPort));
    // A leg that goes away is unreachable at once.
    let ind = c.send_indication(addr(LEG), b"x");
    assert!(matches!(relay(&mut s, at(2), &c, &ind), ClientAction::Relay { .. }));
    s.remove_own_leg(addr(LEG));
    assert_eq!(relay(&mut s, at(2), &c, &ind), ClientAction::Dropped(Refusal::PeerNotAllowed));
    assert!(!s.is_own_leg(addr(LEG)));
    // The allow-list is the explicit opt-in; deny still wins over it.
    let mut cfg = config();
    cfg.policy.allow = vec!["8.8.8.0/24".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
    let mut s = Server::new(cfg, Pool::default()).unwrap();
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    c.allocate(&mut s, at(0));
    assert_eq!(c.permit(&mut s, at(1), addr("8.8.8.8:53")).class(), Class::SuccessResponse);
    let ind = c.send_indication(addr("8.8.8.8:5353"), b"x");
    assert_eq!(relay(&mut s, at(2), &c, &ind), ClientAction::Relay { relayed: addr("198.51.100.1:50001"), peer: addr("8.8.8.8:5353"), payload: b"x" });
    assert_eq!(error(&c.permit(&mut s, at(1), addr("10.0.0.1:1"))), (Class::ErrorResponse, Some(403)));
    // A leg of ours on a private address is reachable, exactly: not its host's other ports.
    s.add_own_leg(addr("10.1.2.3:40000"));
    assert_eq!(c.permit(&mut s, at(1), addr("10.1.2.3:40000")).class(), Class::SuccessResponse);
    assert_eq!(c.bind(&mut s, at(1), 0x4001, addr("10.1.2.3:40000")).class(), Class::SuccessResponse);
    let ind = c.send_indication(addr("10.1.2.3:40000"), b"x");
    assert!(matches!(relay(&mut s, at(2), &c, &ind), ClientAction::Relay { .. }));
    let ind = c.send_indication(addr("10.1.2.3:22"), b"x");
    assert_eq!(relay(&mut s, at(2), &c, &ind), ClientAction::Dropped(Refusal::PeerNotAllowed));
    assert_eq!(error(&c.bind(&mut s, at(1), 0x4002, addr("10.1.2.3:22"))), (Class::ErrorResponse, Some(403)));
    let _ = relayed;
}

#[test]
fn channel_bind_rules() {
    let mut s = server();
    let other_leg = addr("203.0.113.11:40000");
    s.add_own_leg(other_leg);
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    let relayed = c.allocate(&mut s, at(0)).xor(ATTR_XOR_RELAYED_ADDRESS).unwrap();
    for bad in [0x3FFF, 0x5000, 0xFFFF] {
        assert_eq!(error(&c.bind(&mut s, at(1), bad, addr(LEG))), (Class::ErrorResponse, Some(400)), "{bad:#x}");
    }
    assert_eq!(c.bind(&mut s, at(1), 0x4000, addr(LEG)).class(), Class::SuccessResponse);
    // The binding installed the permission: Send indications pass without CreatePermission.
    let ind = c.send_indication(addr(LEG), b"x");
    assert!(matches!(relay(&mut s, at(2), &c, &ind), ClientAction::Relay { .. }));
    // Number to another peer, or peer to another number: 400. The same pair refreshes.
    assert_eq!(error(&c.bind(&mut s, at(2), 0x4000, other_leg)), (Class::ErrorResponse, Some(400)));
    assert_eq!(error(&c.bind(&mut s, at(2), 0x4001, addr(LEG))), (Class::ErrorResponse, Some(400)));
    assert_eq!(c.bind(&mut s, at(100), 0x4000, addr(LEG)).class(), Class::SuccessResponse);
    assert_eq!(c.bind(&mut s, at(100), 0x4001, other_leg).class(), Class::SuccessResponse);
    // Keep the allocation alive; let the 0x4000 binding expire (600 s after t=100).
    c.refresh(&mut s, at(500), 3600);
    s.handle_timeout(at(701).mono);
    let mut cd = [0u8; 16];
    let n = encode_channel_data(&mut cd, ChannelNumber::new(0x4000).unwrap(), b"m", false).unwrap();
    assert_eq!(relay(&mut s, at(701), &c, &cd[..n]), ClientAction::Dropped(Refusal::NoChannel));
    // Peer data now arrives as a Data indication.
    c.permit(&mut s, at(701), addr(LEG));
    let mut out = [0u8; 256];
    let PeerAction::ToClient { len, .. } = s.handle_peer(at(702).mono, relayed, addr(LEG), b"d", &mut out) else { panic!() };
    assert_eq!(Message::new_checked(&out[..len]).unwrap().method(), METHOD_DATA);
    // Within five minutes of expiry the number is still reserved for its peer...
    assert_eq!(error(&c.bind(&mut s, at(800), 0x4000, other_leg)), (Class::ErrorResponse, Some(400)));
    // ...and the peer to its number; after the five minutes, either is free.
    assert_eq!(error(&c.bind(&mut s, at(801), 0x4002, addr(LEG))), (Class::ErrorResponse, Some(400)));
    s.handle_timeout(at(1001).mono);
    assert_eq!(c.bind(&mut s, at(1001), 0x4000, other_leg).class(), Class::SuccessResponse);
    assert_eq!(c.bind(&mut s, at(1001), 0x4002, addr(LEG)).class(), Class::SuccessResponse);
    assert_eq!(s.refused(Refusal::BadRequest), 7);
}

/// Every route change queued so far.
fn routes(s: &mut Server<Pool>) -> Vec<RouteChange> {
    std::iter::from_fn(|| s.poll_route()).collect()
}

#[test]
fn channel_routes_follow_channels_permissions_allocations_and_legs() {
    let mut s = server();
    let other = addr("203.0.113.11:40000");
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    let relayed = c.allocate(&mut s, at(0)).xor(ATTR_XOR_RELAYED_ADDRESS).unwrap();
    // A permission alone is no route; a channel to a leg is.
    c.permit(&mut s, at(1), addr(LEG));
    assert_eq!(routes(&mut s), []);
    c.bind(&mut s, at(2), 0x4000, addr(LEG));
    let route = ChannelRoute { client: c.ft, channel: ChannelNumber::new(0x4000).unwrap(), relayed, peer: addr(LEG) };
    assert_eq!(routes(&mut s), [RouteChange::Up(route)]);
    assert_eq!(s.routes().copied().collect::<Vec<_>>(), [route]);
    // Refreshing the binding changes nothing; a peer that is not a leg gets no route (refused).
    c.bind(&mut s, at(3), 0x4000, addr(LEG));
    assert_eq!(error(&c.bind(&mut s, at(3), 0x4001, other)), (Class::ErrorResponse, Some(403)));
    assert_eq!(routes(&mut s), []);
    // The leg goes: the route goes; it comes back with the leg.
    s.remove_own_leg(addr(LEG));
    assert_eq!(routes(&mut s), [RouteChange::Down(route)]);
    s.add_own_leg(addr(LEG));
    assert_eq!(routes(&mut s), [RouteChange::Up(route)]);
    // The permission expires (300 s after t=3) before the channel (600 s): the route goes at the
    // sweep, and a CreatePermission brings it back.
    c.refresh(&mut s, at(200), 3600);
    assert!(s.poll_timeout().is_some_and(|t| t <= at(303).mono));
    s.handle_timeout(at(302).mono);
    assert_eq!(routes(&mut s), []);
    s.handle_timeout(at(303).mono);
    assert_eq!(routes(&mut s), [RouteChange::Down(route)]);
    c.permit(&mut s, at(304), addr(LEG));
    assert_eq!(routes(&mut s), [RouteChange::Up(route)]);
    // The channel expires at 603 (its permission, refreshed at 304, lives on): the deadline
    // says so and the sweep takes the route.
    assert_eq!(s.poll_timeout(), Some(at(603).mono));
    s.handle_timeout(at(603).mono);
    assert_eq!(routes(&mut s), [RouteChange::Down(route)]);
    // Bound again (the same pair may, within the number's reservation), then the allocation
    // deleted (Refresh 0): the route goes with it.
    assert_eq!(c.bind(&mut s, at(610), 0x4000, addr(LEG)).class(), Class::SuccessResponse);
    assert_eq!(routes(&mut s), [RouteChange::Up(route)]);
    c.refresh(&mut s, at(611), 0);
    assert_eq!(routes(&mut s), [RouteChange::Down(route)]);
    assert_eq!(s.routes().count(), 0);
    // Over TCP: the connection closing takes the route.
    let mut t = Client::new("192.0.2.7:61001", Transport::Tcp);
    let relayed_t = t.allocate(&mut s, at(620)).xor(ATTR_XOR_RELAYED_ADDRESS).unwrap();
    t.bind(&mut s, at(621), 0x4000, addr(LEG));
    let route_t = ChannelRoute { client: t.ft, channel: ChannelNumber::new(0x4000).unwrap(), relayed: relayed_t, peer: addr(LEG) };
    assert_eq!(routes(&mut s), [RouteChange::Up(route_t)]);
    s.close_connection(&t.ft);
    assert_eq!(routes(&mut s), [RouteChange::Down(route_t)]);
}

#[test]
fn lifetimes_and_expiry() {
    let mut s = server();
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    let relayed = c.allocate(&mut s, at(0)).xor(ATTR_XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(s.poll_timeout(), Some(at(600).mono));
    // Requests below the default get the default, above the maximum the maximum.
    assert_eq!(c.refresh(&mut s, at(10), 30).lifetime(), Some(600));
    assert_eq!(c.refresh(&mut s, at(10), 100_000).lifetime(), Some(3600));
    assert_eq!(c.refresh(&mut s, at(10), 1200).lifetime(), Some(1200));
    // Permissions last 300 s.
    c.permit(&mut s, at(20), addr(LEG));
    let ind = c.send_indication(addr(LEG), b"x");
    assert!(matches!(relay(&mut s, at(319), &c, &ind), ClientAction::Relay { .. }));
    assert_eq!(relay(&mut s, at(320), &c, &ind), ClientAction::Dropped(Refusal::NoPermission));
    s.handle_timeout(at(320).mono);
    assert_eq!(s.poll_timeout(), Some(at(1210).mono));
    // The allocation expires 1200 s after the last refresh, even before any sweep.
    assert_eq!(s.relayed_address(&c.ft, at(1209).mono), Some(relayed));
    assert_eq!(s.relayed_address(&c.ft, at(1210).mono), None);
    assert!(s.allocator().released.is_empty());
    s.handle_timeout(at(1210).mono);
    assert_eq!((s.allocator().released.as_slice(), s.allocation_count(), s.poll_timeout()), (&[relayed][..], 0, None));
    // A new Allocate on the 5-tuple works again.
    c.allocate(&mut s, at(1211));
    // TCP connection closed: the allocation goes.
    let mut t = Client::new("192.0.2.7:61001", Transport::Tcp);
    t.allocate(&mut s, at(1212));
    s.close_connection(&t.ft);
    assert_eq!(s.allocator().released.len(), 2);
}

#[test]
fn turn_over_tcp_pads_channel_data_and_deframes() {
    let mut s = server();
    let mut c = Client::new("192.0.2.7:61000", Transport::Tcp);
    let mut deframer = StreamDeframer::new(Framing::Turn, 4096);
    let m1 = c.build(METHOD_ALLOCATE, Class::Request, false, |_| vec![udp_transport()]);
    // The stream arrives in odd pieces.
    for piece in m1.chunks(7) {
        deframer.push(piece);
    }
    let frame = deframer.next_frame().unwrap().unwrap().to_vec();
    assert_eq!(frame, m1);
    assert_eq!(deframer.next_frame(), Ok(None));
    c.send(&mut s, at(0), &frame);
    let relayed = c.request(&mut s, at(0), METHOD_ALLOCATE, |_| vec![udp_transport()]).xor(ATTR_XOR_RELAYED_ADDRESS).unwrap();
    c.bind(&mut s, at(0), 0x4ABC, addr(LEG));
    // Peer → client over TCP: ChannelData padded to 4.
    let mut out = [0u8; 64];
    let PeerAction::ToClient { len, .. } = s.handle_peer(at(1).mono, relayed, addr(LEG), b"abcde", &mut out) else { panic!() };
    assert_eq!(&out[..len], b"\x4a\xbc\x00\x05abcde\0\0\0");
    // Client → peer: two padded ChannelData and a Send indication back to back in one read.
    let mut stream = Vec::new();
    let ch = ChannelNumber::new(0x4ABC).unwrap();
    for p in [&b"one"[..], b"four"] {
        let mut b = [0u8; 16];
        let n = encode_channel_data(&mut b, ch, p, true).unwrap();
        stream.extend_from_slice(&b[..n]);
    }
    stream.extend_from_slice(&c.send_indication(addr(LEG), b"ind"));
    deframer.push(&stream);
    let mut payloads = Vec::new();
    while let Some(frame) = deframer.next_frame().unwrap() {
        let frame = frame.to_vec();
        match relay(&mut s, at(2), &c, &frame) {
            ClientAction::Relay { payload, .. } => payloads.push(payload.to_vec()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(payloads, [b"one".to_vec(), b"four".to_vec(), b"ind".to_vec()]);
    assert_eq!(deframer.buffered(), 0);
}

#[test]
fn turn_deframer_refuses_garbage_and_oversize() {
    // Not STUN (bad cookie), not a channel (0x5000+), RTP-looking bytes: garbage, and it sticks.
    for garbage in [&b"\x00\x01\x00\x00\x21\x12\xa4\x43"[..], b"\x50\x00\x00\x00", b"\x80\x60\x00\x01", b"\x00\x01\x00\x03"] {
        let mut d = StreamDeframer::new(Framing::Turn, 4096);
        d.push(garbage);
        assert_eq!(d.next_frame(), Err(FramingError::Garbage), "{garbage:?}");
        d.push(b"\x40\x00\x00\x00");
        assert_eq!(d.next_frame(), Err(FramingError::Garbage));
    }
    // A header announcing more than the maximum: refused before the body arrives.
    let mut d = StreamDeframer::new(Framing::Turn, 100);
    d.push(b"\x40\x00\x00\x61");
    assert_eq!(d.next_frame(), Err(FramingError::Oversize));
    let mut d = StreamDeframer::new(Framing::Turn, 100);
    d.push(b"\x40\x00\x00\x60");
    assert_eq!(d.next_frame(), Ok(None), "4 + 96 = 100 fits");
    // A STUN header whose cookie has not arrived yet waits.
    let mut d = StreamDeframer::new(Framing::Turn, 100);
    d.push(b"\x00\x01\x00\x00\x21");
    assert_eq!(d.next_frame(), Ok(None));
    assert_eq!(d.buffered(), 5);
    d.push(b"\x12\xa4\x42\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c");
    assert_eq!(d.next_frame().unwrap().map(<[u8]>::len), Some(20));
}

#[test]
fn rfc4571_deframer() {
    let mut d = StreamDeframer::new(Framing::Rfc4571, 1 + 2 + 1000);
    let mut stream = Vec::new();
    for p in [&b"first"[..], b"", b"third packet"] {
        stream.extend_from_slice(&rfc4571_prefix(p.len()).unwrap());
        stream.extend_from_slice(p);
    }
    // Byte by byte: every frame appears exactly when its last byte does.
    let mut frames = Vec::new();
    for b in &stream {
        d.push(core::slice::from_ref(b));
        while let Some(f) = d.next_frame().unwrap() {
            frames.push(f.to_vec());
        }
    }
    assert_eq!(frames, [b"first".to_vec(), Vec::new(), b"third packet".to_vec()]);
    // Split prefix, then oversize.
    d.push(&[0x03]);
    assert_eq!(d.next_frame(), Ok(None));
    d.push(&[0xEA]);
    assert_eq!(d.next_frame(), Err(FramingError::Oversize));
    d.push(b"more");
    assert_eq!(d.next_frame(), Err(FramingError::Oversize));
    assert_eq!(rfc4571_prefix(65_536), None);
}

#[test]
fn refusal_names_and_codes() {
    let mut names: Vec<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
    for (i, r) in Refusal::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Refusal::COUNT);
    assert_eq!(Refusal::PeerControlPort.error_code(), Some(403));
    assert_eq!(Refusal::NoPermission.error_code(), None);
}

#[test]
fn config_is_validated() {
    let mut c = config();
    c.realm = String::new();
    assert_eq!(Server::new(c, Pool::default()).err(), Some(ConfigError::Realm { len: 0 }));
    let mut c = config();
    c.default_lifetime = c.max_lifetime * 2;
    assert!(matches!(Server::new(c, Pool::default()), Err(ConfigError::Lifetimes { .. })));
    let mut c = config();
    c.secret.clear();
    assert_eq!(Server::new(c, Pool::default()).err(), Some(ConfigError::EmptySecret));
    assert!(!format!("{:?}", config()).contains("current-secret"), "secrets stay out of logs");
    assert_eq!(parse_rest_username("1700000000:alice"), Some((1_700_000_000, "alice")));
}

#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8656);
    let mut s = server();
    let mut c = Client::new("192.0.2.7:61000", Transport::Udp);
    let relayed = c.allocate(&mut s, at(0)).xor(ATTR_XOR_RELAYED_ADDRESS).unwrap();
    c.bind(&mut s, at(0), 0x4000, addr(LEG));
    let seeds = [
        c.build(METHOD_ALLOCATE, Class::Request, true, |_| vec![udp_transport()]),
        c.build(METHOD_REFRESH, Class::Request, true, |_| vec![u32_attr(ATTR_LIFETIME, 600)]),
        c.build(METHOD_CREATE_PERMISSION, Class::Request, true, |t| vec![(ATTR_XOR_PEER_ADDRESS, xor_value(addr(LEG), t))]),
        c.build(METHOD_CHANNEL_BIND, Class::Request, true, |t| {
            vec![u32_attr(ATTR_CHANNEL_NUMBER, 0x4001 << 16), (ATTR_XOR_PEER_ADDRESS, xor_value(addr(LEG), t))]
        }),
        c.send_indication(addr(LEG), b"payload"),
        b"\x40\x00\x00\x03abc".to_vec(),
    ];
    let mut out = [0u8; MAX_RESPONSE];
    let mut peer_out = [0u8; 256];
    for i in 0..20_000u64 {
        let mut b = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(0..4) {
            let j = rng.random_range(0..b.len());
            b[j] = rng.random();
        }
        b.truncate(rng.random_range(0..=b.len()));
        let now = Now { mono: Instant::from_nanos(i * 50_000_000), unix_secs: UNIX0 + i / 20 };
        if let ClientAction::Reply(n) = s.handle_client(now, c.ft, &b, &mut out) {
            assert!(Message::new_checked(&out[..n]).is_ok());
        }
        let _ = s.handle_peer(now.mono, relayed, addr(LEG), &b, &mut peer_out);
        s.handle_timeout(now.mono);
    }
}

/// The client-side builder against the server: challenge, allocation, channel, refresh.
#[test]
fn the_client_builder_drives_the_server() {
    use super::client::{Answer, TurnClient};
    let mut s = server();
    s.add_own_leg(addr(LEG));
    let (user, pass) = rest_api_credentials(SECRET, "carol", UNIX0 + 3600);
    let mut c = TurnClient::new(user, pass, [9, 9, 9, 9]);
    let from = FiveTuple { client: addr("192.0.2.9:5000"), server: addr("203.0.113.10:3478"), transport: Transport::Udp };
    let ask = |c: &mut TurnClient, s: &mut Server<Pool>, build: &dyn Fn(&mut TurnClient, &mut [u8]) -> usize| -> Answer {
        let mut req = [0u8; 512];
        let n = build(c, &mut req);
        let mut out = [0u8; MAX_RESPONSE];
        match s.handle_client(at(1), from, &req[..n], &mut out) {
            ClientAction::Reply(len) => c.on_answer(&out[..len]),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(ask(&mut c, &mut s, &|c, o| c.allocate(o).unwrap()), Answer::Retry(401));
    let Answer::Success { relayed: Some(relayed), mapped, lifetime } = ask(&mut c, &mut s, &|c, o| c.allocate(o).unwrap()) else { panic!("allocation") };
    assert_eq!(mapped, Some(addr("192.0.2.9:5000")));
    assert_eq!(lifetime, Some(600));
    let ch = ChannelNumber::new(0x4000).unwrap();
    assert!(matches!(ask(&mut c, &mut s, &|c, o| c.channel_bind(ch, addr(LEG), o).unwrap()), Answer::Success { .. }));
    assert!(matches!(ask(&mut c, &mut s, &|c, o| c.create_permission(addr(LEG), o).unwrap()), Answer::Success { .. }));
    assert_eq!(ask(&mut c, &mut s, &|c, o| c.channel_bind(ch, addr("8.8.8.8:53"), o).unwrap()), Answer::Error(403));
    assert!(matches!(ask(&mut c, &mut s, &|c, o| c.refresh(0, o).unwrap()), Answer::Success { .. }));
    assert_eq!(s.allocation_count(), 0);
    let _ = relayed;
}
