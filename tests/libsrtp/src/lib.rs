//! Test-only bindings to the system libsrtp2 (Debian's 2.5 build).
//!
//! libsrtp is the independent SRTP implementation that `sluice-core`'s SRTP module is checked
//! against (interop tests) and measured against (benchmarks). Debian builds it against NSS
//! (`ldd libsrtp2.so` shows libnss3), so AES-GCM (RFC 7714) is available: the
//! `srtp_crypto_policy_set_aes_gcm_*` setters and the `srtp_aes_gcm_128/256` cipher types are
//! exported. The declarations below are written by hand from `/usr/include/srtp2/srtp.h`; the
//! struct layout was checked with a C program (`sizeof(srtp_policy_t) == 128`,
//! `sizeof(srtp_crypto_policy_t) == 24`, offsets rtp@8 rtcp@32 key@56 window_size@88 next@120),
//! and the same numbers are asserted at compile time below.

use std::ffi::{c_int, c_uint, c_ulong, c_void};
use std::sync::Once;

/// Room libsrtp may append on protect (`SRTP_MAX_TRAILER_LEN`: tag + MKI + SRTCP index).
pub const SRTP_MAX_TRAILER_LEN: usize = 16 + 128 + 4;

mod ffi {
    use super::{c_int, c_uint, c_ulong, c_void};

    /// `srtp_crypto_policy_t`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct CryptoPolicy {
        pub cipher_type: u32,
        pub cipher_key_len: c_int,
        pub auth_type: u32,
        pub auth_key_len: c_int,
        pub auth_tag_len: c_int,
        /// `srtp_sec_serv_t` (a C enum, int-sized).
        pub sec_serv: c_int,
    }

    /// `srtp_ssrc_t`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Ssrc {
        /// `srtp_ssrc_type_t`.
        pub kind: c_int,
        pub value: c_uint,
    }

    /// `srtp_policy_t`.
    #[repr(C)]
    #[derive(Debug)]
    pub struct Policy {
        pub ssrc: Ssrc,
        pub rtp: CryptoPolicy,
        pub rtcp: CryptoPolicy,
        pub key: *mut u8,
        pub keys: *mut *mut c_void,
        pub num_master_keys: c_ulong,
        pub deprecated_ekt: *mut c_void,
        pub window_size: c_ulong,
        pub allow_repeat_tx: c_int,
        pub enc_xtn_hdr: *mut c_int,
        pub enc_xtn_hdr_count: c_int,
        pub next: *mut Policy,
    }

    const _: () = assert!(size_of::<CryptoPolicy>() == 24);
    const _: () = assert!(size_of::<Ssrc>() == 8);
    const _: () = assert!(size_of::<Policy>() == 128);
    const _: () = assert!(std::mem::offset_of!(Policy, rtp) == 8);
    const _: () = assert!(std::mem::offset_of!(Policy, rtcp) == 32);
    const _: () = assert!(std::mem::offset_of!(Policy, key) == 56);
    const _: () = assert!(std::mem::offset_of!(Policy, window_size) == 88);
    const _: () = assert!(std::mem::offset_of!(Policy, allow_repeat_tx) == 96);
    const _: () = assert!(std::mem::offset_of!(Policy, enc_xtn_hdr_count) == 112);
    const _: () = assert!(std::mem::offset_of!(Policy, next) == 120);

    pub const SSRC_SPECIFIC: c_int = 1;
    pub const SEC_SERV_AUTH: c_int = 2;

    /// `srtp_t` is `srtp_ctx_t *`; the context is opaque here.
    pub type SrtpT = *mut c_void;

    unsafe extern "C" {
        pub fn srtp_init() -> c_int;
        pub fn srtp_create(session: *mut SrtpT, policy: *const Policy) -> c_int;
        pub fn srtp_dealloc(session: SrtpT) -> c_int;
        pub fn srtp_protect(ctx: SrtpT, rtp_hdr: *mut c_void, len_ptr: *mut c_int) -> c_int;
        pub fn srtp_unprotect(ctx: SrtpT, srtp_hdr: *mut c_void, len_ptr: *mut c_int) -> c_int;
        pub fn srtp_protect_rtcp(ctx: SrtpT, rtcp_hdr: *mut c_void, len_ptr: *mut c_int) -> c_int;
        pub fn srtp_unprotect_rtcp(ctx: SrtpT, srtcp_hdr: *mut c_void, len_ptr: *mut c_int) -> c_int;
        pub fn srtp_set_stream_roc(session: SrtpT, ssrc: u32, roc: u32) -> c_int;
        /// `srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80` is a macro for this function.
        pub fn srtp_crypto_policy_set_rtp_default(p: *mut CryptoPolicy);
        pub fn srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(p: *mut CryptoPolicy);
        pub fn srtp_crypto_policy_set_aes_gcm_128_16_auth(p: *mut CryptoPolicy);
        pub fn srtp_crypto_policy_set_aes_gcm_256_16_auth(p: *mut CryptoPolicy);
    }
}

/// The SRTP protection profiles libsrtp is exercised with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibProfile {
    /// AES_CM_128_HMAC_SHA1_80 (RFC 3711/4568).
    AesCm128HmacSha1_80,
    /// AES_CM_128_HMAC_SHA1_32; SRTCP keeps the 80-bit tag (RFC 5764 §4.1.2).
    AesCm128HmacSha1_32,
    /// AEAD_AES_128_GCM (RFC 7714).
    AeadAes128Gcm,
    /// AEAD_AES_256_GCM (RFC 7714).
    AeadAes256Gcm,
}

/// Which way a libsrtp session protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The session protects (sender side).
    Outbound,
    /// The session unprotects (receiver side).
    Inbound,
}

/// A libsrtp error status (`srtp_err_status_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibSrtpError(pub i32);

impl std::fmt::Display for LibSrtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "libsrtp error status {}", self.0)
    }
}

impl std::error::Error for LibSrtpError {}

fn check(status: c_int) -> Result<(), LibSrtpError> {
    if status == 0 { Ok(()) } else { Err(LibSrtpError(status)) }
}

/// One libsrtp session holding one specific-SSRC stream.
#[derive(Debug)]
pub struct LibSrtp {
    ctx: ffi::SrtpT,
}

impl LibSrtp {
    /// Creates a session for `ssrc` with master `key` and `salt` (concatenated as libsrtp
    /// expects), the default replay window and encrypted SRTCP.
    pub fn new(profile: LibProfile, key: &[u8], salt: &[u8], ssrc: u32, direction: Direction) -> Result<Self, LibSrtpError> {
        Self::with_options(profile, key, salt, ssrc, direction, 0, true)
    }

    /// Like [`LibSrtp::new`] with a replay window size (0 = libsrtp's default 128) and the
    /// SRTCP encryption choice.
    pub fn with_options(
        profile: LibProfile,
        key: &[u8],
        salt: &[u8],
        ssrc: u32,
        direction: Direction,
        window_size: u64,
        srtcp_encrypt: bool,
    ) -> Result<Self, LibSrtpError> {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            // SAFETY: srtp_init takes no arguments and is called exactly once (Once).
            let status = unsafe { ffi::srtp_init() };
            assert_eq!(status, 0, "srtp_init failed");
        });
        let _ = direction; // a specific-SSRC stream serves both directions in libsrtp
        let mut rtp = ffi::CryptoPolicy::default();
        let mut rtcp = ffi::CryptoPolicy::default();
        let setter: unsafe extern "C" fn(*mut ffi::CryptoPolicy) = match profile {
            LibProfile::AesCm128HmacSha1_80 => ffi::srtp_crypto_policy_set_rtp_default,
            LibProfile::AesCm128HmacSha1_32 => ffi::srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32,
            LibProfile::AeadAes128Gcm => ffi::srtp_crypto_policy_set_aes_gcm_128_16_auth,
            LibProfile::AeadAes256Gcm => ffi::srtp_crypto_policy_set_aes_gcm_256_16_auth,
        };
        // SAFETY: the setters only write the fields of the CryptoPolicy they are given, which is
        // a valid, exclusively borrowed, correctly laid out (asserted) srtp_crypto_policy_t.
        unsafe { setter(&mut rtp) };
        let rtcp_setter = if profile == LibProfile::AesCm128HmacSha1_32 {
            // RFC 5764 §4.1.2: SRTCP keeps the 80-bit tag for the _32 profile.
            ffi::srtp_crypto_policy_set_rtp_default
        } else {
            setter
        };
        // SAFETY: as above.
        unsafe { rtcp_setter(&mut rtcp) };
        if !srtcp_encrypt {
            rtcp.sec_serv = ffi::SEC_SERV_AUTH;
        }
        let mut master: Vec<u8> = key.iter().chain(salt).copied().collect();
        // libsrtp reads key_len + salt_len bytes of the master key; GCM salts are 12 bytes but
        // keep a few spare zero bytes in case a code path reads the 14-byte legacy length.
        master.resize(master.len() + 16, 0);
        let policy = ffi::Policy {
            ssrc: ffi::Ssrc { kind: ffi::SSRC_SPECIFIC, value: ssrc },
            rtp,
            rtcp,
            key: master.as_mut_ptr(),
            keys: std::ptr::null_mut(),
            num_master_keys: 0,
            deprecated_ekt: std::ptr::null_mut(),
            window_size: window_size as c_ulong,
            allow_repeat_tx: 0,
            enc_xtn_hdr: std::ptr::null_mut(),
            enc_xtn_hdr_count: 0,
            next: std::ptr::null_mut(),
        };
        let mut ctx: ffi::SrtpT = std::ptr::null_mut();
        // SAFETY: `policy` is a fully initialised srtp_policy_t whose `key` points at `master`,
        // which outlives the call (libsrtp copies the key material into the session); `ctx` is
        // a valid out-pointer.
        check(unsafe { ffi::srtp_create(&mut ctx, &policy) })?;
        Ok(Self { ctx })
    }

    /// Protects the RTP packet `buf[..len]` in place; `buf` needs
    /// [`SRTP_MAX_TRAILER_LEN`] spare bytes. Returns the SRTP length.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, LibSrtpError> {
        self.call(ffi::srtp_protect, buf, len, true)
    }

    /// Unprotects the SRTP packet `buf[..len]` in place. Returns the RTP length.
    pub fn unprotect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, LibSrtpError> {
        self.call(ffi::srtp_unprotect, buf, len, false)
    }

    /// Protects the RTCP compound packet `buf[..len]` in place. Returns the SRTCP length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, LibSrtpError> {
        self.call(ffi::srtp_protect_rtcp, buf, len, true)
    }

    /// Unprotects the SRTCP packet `buf[..len]` in place. Returns the RTCP length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, LibSrtpError> {
        self.call(ffi::srtp_unprotect_rtcp, buf, len, false)
    }

    /// Sets the rollover counter of the session's stream for `ssrc`.
    pub fn set_roc(&mut self, ssrc: u32, roc: u32) -> Result<(), LibSrtpError> {
        // SAFETY: `self.ctx` is a live session created by srtp_create and not yet deallocated.
        check(unsafe { ffi::srtp_set_stream_roc(self.ctx, ssrc, roc) })
    }

    fn call(
        &mut self,
        f: unsafe extern "C" fn(ffi::SrtpT, *mut c_void, *mut c_int) -> c_int,
        buf: &mut [u8],
        len: usize,
        grows: bool,
    ) -> Result<usize, LibSrtpError> {
        // libsrtp writes past `len` on protect without knowing the buffer size.
        let need = if grows { len + SRTP_MAX_TRAILER_LEN } else { len };
        assert!(buf.len() >= need, "buffer too small for libsrtp");
        let mut n = c_int::try_from(len).expect("packet length fits c_int");
        // SAFETY: `self.ctx` is a live session; `buf` is valid for writes of `need` bytes,
        // which covers everything libsrtp reads or appends for a packet of `len` bytes;
        // `n` is a valid in/out length pointer.
        check(unsafe { f(self.ctx, buf.as_mut_ptr().cast(), &mut n) })?;
        Ok(usize::try_from(n).expect("libsrtp returns a non-negative length"))
    }
}

impl Drop for LibSrtp {
    fn drop(&mut self) {
        // SAFETY: `self.ctx` came from srtp_create and is deallocated exactly once, here.
        unsafe { ffi::srtp_dealloc(self.ctx) };
    }
}

// SAFETY: a libsrtp session has no thread affinity; `&mut self` on every call serialises access.
unsafe impl Send for LibSrtp {}
