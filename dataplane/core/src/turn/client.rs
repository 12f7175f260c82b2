//! The client side of TURN, just enough to drive a server: the requests a client sends (Allocate,
//! Refresh, CreatePermission, ChannelBind) with long-term credentials, and what their answers
//! say. Sans-IO like the server; used by the integration tests and the relayed-leg benchmark.

use std::net::SocketAddr;

use super::{
    ATTR_CHANNEL_NUMBER, ATTR_ERROR_CODE, ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT, ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS,
    ChannelNumber, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, TRANSPORT_UDP, long_term_key,
};
use crate::ice::{ATTR_USERNAME, ATTR_XOR_MAPPED_ADDRESS, append_fingerprint, append_integrity, header, put_attr};
use crate::wire::WireError;
use crate::wire::stun::{Class, Message, decode_xor_address, encode_xor_address};

/// A client's credentials and the server's challenge (realm, nonce) once it has answered 401.
#[derive(Clone, Debug)]
pub struct TurnClient {
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    next_tid: u64,
    tid_seed: [u8; 4],
}

/// What an answer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A success response: the relayed and mapped addresses and the lifetime where present.
    Success {
        /// XOR-RELAYED-ADDRESS.
        relayed: Option<SocketAddr>,
        /// XOR-MAPPED-ADDRESS.
        mapped: Option<SocketAddr>,
        /// LIFETIME, seconds.
        lifetime: Option<u32>,
    },
    /// 401 or 438 with a realm and nonce: send the request again (the client now has them).
    Retry(u16),
    /// Any other error response: its code.
    Error(u16),
    /// Not a STUN response, or not one of this client's.
    NotAnAnswer,
}

impl TurnClient {
    /// A client with `username` and `password` (for Sluice: `rest_api_credentials`);
    /// `tid_seed` makes its transaction ids unique among clients.
    pub fn new(username: impl Into<String>, password: impl Into<String>, tid_seed: [u8; 4]) -> Self {
        Self { username: username.into(), password: password.into(), realm: None, nonce: None, next_tid: 1, tid_seed }
    }

    fn tid(&mut self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.tid_seed);
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        self.next_tid += 1;
        t
    }

    fn request(&mut self, method: u16, attrs: &[(u16, &[u8])], out: &mut [u8]) -> Result<usize, WireError> {
        let tid = self.tid();
        // Class request: C1 = C0 = 0; the method bits go in as they are for methods below 0x10.
        header(out, method, &tid)?;
        let mut at = 20;
        for (kind, value) in attrs {
            at = put_attr(out, at, *kind, value)?;
        }
        if let (Some(realm), Some(nonce)) = (self.realm.clone(), self.nonce.clone()) {
            at = put_attr(out, at, ATTR_USERNAME, self.username.as_bytes())?;
            at = put_attr(out, at, ATTR_REALM, realm.as_bytes())?;
            at = put_attr(out, at, ATTR_NONCE, &nonce)?;
            let key = long_term_key(self.username.as_bytes(), realm.as_bytes(), self.password.as_bytes());
            at = append_integrity(out, at, &key)?;
        } else {
            out[2..4].copy_from_slice(&((at - 20) as u16).to_be_bytes());
        }
        append_fingerprint(out, at)
    }

    /// An Allocate for a UDP relay.
    pub fn allocate(&mut self, out: &mut [u8]) -> Result<usize, WireError> {
        self.request(METHOD_ALLOCATE, &[(ATTR_REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0])], out)
    }

    /// A Refresh asking for `lifetime` seconds (0 deletes the allocation).
    pub fn refresh(&mut self, lifetime: u32, out: &mut [u8]) -> Result<usize, WireError> {
        self.request(METHOD_REFRESH, &[(ATTR_LIFETIME, &lifetime.to_be_bytes())], out)
    }

    /// A CreatePermission for `peer`'s IP.
    pub fn create_permission(&mut self, peer: SocketAddr, out: &mut [u8]) -> Result<usize, WireError> {
        let tid_next = self.peek_tid();
        let mut v = [0u8; 20];
        let n = encode_xor_address(peer, &tid_next, &mut v);
        self.request(METHOD_CREATE_PERMISSION, &[(ATTR_XOR_PEER_ADDRESS, &v[..n])], out)
    }

    /// A ChannelBind of `channel` to `peer`.
    pub fn channel_bind(&mut self, channel: ChannelNumber, peer: SocketAddr, out: &mut [u8]) -> Result<usize, WireError> {
        let tid_next = self.peek_tid();
        let mut v = [0u8; 20];
        let n = encode_xor_address(peer, &tid_next, &mut v);
        let ch = channel.get().to_be_bytes();
        self.request(METHOD_CHANNEL_BIND, &[(ATTR_CHANNEL_NUMBER, &[ch[0], ch[1], 0, 0]), (ATTR_XOR_PEER_ADDRESS, &v[..n])], out)
    }

    fn peek_tid(&self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.tid_seed);
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        t
    }

    /// Reads an answer (keeping the realm and nonce of a 401/438).
    pub fn on_answer(&mut self, bytes: &[u8]) -> Answer {
        let Ok(msg) = Message::new_checked(bytes) else { return Answer::NotAnAnswer };
        let tid = msg.transaction_id();
        if tid[..4] != self.tid_seed {
            return Answer::NotAnAnswer;
        }
        match msg.class() {
            Class::SuccessResponse => Answer::Success {
                relayed: msg.find_attribute(ATTR_XOR_RELAYED_ADDRESS).and_then(|v| decode_xor_address(v, &tid)),
                mapped: msg.find_attribute(ATTR_XOR_MAPPED_ADDRESS).and_then(|v| decode_xor_address(v, &tid)),
                lifetime: msg.find_attribute(ATTR_LIFETIME).and_then(|v| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))),
            },
            Class::ErrorResponse => {
                let code = msg.find_attribute(ATTR_ERROR_CODE).and_then(|v| Some(u16::from(*v.get(2)?) * 100 + u16::from(*v.get(3)?))).unwrap_or(0);
                if code == 401 || code == 438 {
                    let realm = msg.find_attribute(ATTR_REALM).and_then(|r| std::str::from_utf8(r).ok()).map(str::to_owned);
                    let nonce = msg.find_attribute(ATTR_NONCE).map(<[u8]>::to_vec);
                    if let (Some(r), Some(n)) = (realm, nonce) {
                        self.realm = Some(r);
                        self.nonce = Some(n);
                        return Answer::Retry(code);
                    }
                }
                Answer::Error(code)
            }
            _ => Answer::NotAnAnswer,
        }
    }
}
