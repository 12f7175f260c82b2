//! The crypto provider behind SRTP: AES-CTR (RFC 3711 AES-CM), AES-GCM (RFC 7714) and
//! HMAC-SHA1 (RFC 2104).
//!
//! The provider is a type parameter of [`SrtpKeys`](super::SrtpKeys) so the crate choice can
//! change without touching the packet code. Key schedules are expanded once, in `new`, on the
//! cold path; the per-packet methods take `&self` and never allocate.
//!
//! # Why aws-lc-rs is the default
//!
//! Measured with `cargo bench -p sluice-core --bench srtp -- --warm-up-time 1
//! --measurement-time 2` (criterion medians, thread CPU time, ns per packet; RTP length before
//! protection; a 2-vCPU Zen 4 VM shared with another build, so absolute numbers are pessimistic
//! — compare columns of the same run):
//!
//! | op / profile                   | size | aws-lc-rs | RustCrypto | libsrtp2 (Debian, NSS) |
//! |--------------------------------|------|-----------|------------|------------------------|
//! | protect AES_CM_128_HMAC_SHA1_80 | 200  |   376 |   317 | 3,311 |
//! | protect AES_CM_128_HMAC_SHA1_80 | 1200 | 1,035 | 1,039 | 6,957 |
//! | protect AEAD_AES_128_GCM       | 200  |   238 |   322 | 1,099 |
//! | protect AEAD_AES_128_GCM       | 1200 |   472 | 1,272 | 1,292 |
//! | unprotect AEAD_AES_128_GCM     | 1200 |   471 | 1,320 | 1,403 |
//! | protect AEAD_AES_256_GCM       | 1200 |   532 | 1,195 | 1,352 |
//!
//! The bare `LessSafeKey::seal_in_place_separate_tag` on the same split measured 316 / 704 ns
//! (200 / 1200 B) in that run, so the SRTP layer itself adds nothing measurable.
//!
//! - AES-GCM dominates the choice: aws-lc-rs ships the AWS-LC assembly (AES-NI, and
//!   VAES/VPCLMULQDQ AVX-512 GCM code paths) and is about 2.5x faster than RustCrypto
//!   `aes-gcm` at 1200 bytes (RustCrypto has AES-NI but no VAES and a slower GHASH). Its
//!   in-place APIs (`EncryptingKey::less_safe_encrypt`,
//!   `LessSafeKey::seal_in_place_separate_tag` and `open_in_place_separate_tag`) take caller buffers and a pre-expanded key, so the packet
//!   path allocates nothing (`tests/srtp_noalloc.rs` checks it for both providers).
//! - For AES-CM the two are within noise: HMAC-SHA1 is ~80% of the cost and both providers
//!   use the same one.
//! - HMAC-SHA1 comes from RustCrypto in both providers. Same run, `hmac-sha1/*` group:
//!   RustCrypto `Hmac<Sha1>` cloned per packet 253 ns (200 B) / 833 ns (1200 B), aws-lc-rs
//!   `hmac::Context::with_key` 438 / 1,067 ns. `sha1` 0.10 uses SHA-NI here via runtime
//!   detection, and cloning the keyed `Hmac` reuses the absorbed inner/outer pads, so no
//!   per-packet re-keying.
//! - libsrtp2 as packaged by Debian is built against NSS (not OpenSSL); in this run it is
//!   3-10x slower than either provider for AES-CM and ~2.5x slower for AES-GCM. The reference
//!   figure for an OpenSSL build of libsrtp on this machine kind (idle) is about 1.1 us for
//!   AES-CM at 1200 bytes; ours measures at or below that even on this shared VM.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The provider could not build a cipher from the key (wrong length for the algorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadKey;

/// AES in counter mode with a full 128-bit counter block (RFC 3711 §4.1.1 AES-CM).
pub trait AesCtr: Sized + Send + Sync {
    /// Expands the key schedule for a 16- or 32-byte key.
    fn new(key: &[u8]) -> Result<Self, BadKey>;
    /// XORs the keystream starting at counter block `iv` into `data`.
    fn apply_keystream(&self, iv: &[u8; 16], data: &mut [u8]);
}

/// AES-GCM with a 96-bit nonce and a 128-bit tag (RFC 7714 profiles).
pub trait AesGcm: Sized + Send + Sync {
    /// Expands the key schedule for a 16- or 32-byte key.
    fn new(key: &[u8]) -> Result<Self, BadKey>;
    /// Encrypts `data` in place and returns the tag.
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16];
    /// Encrypts `input` into `output` (same lengths) and returns the tag: copy, then
    /// [`Self::seal`], unless the provider seals out of place (the forwarder's fan-out reads each
    /// subscriber's plaintext from one decrypted packet, so this saves a copy per subscriber).
    fn seal_to(&self, nonce: &[u8; 12], aad: &[u8], input: &[u8], output: &mut [u8]) -> [u8; 16] {
        output.copy_from_slice(input);
        self.seal(nonce, aad, output)
    }
    /// Verifies `tag` and decrypts `data` in place; `false` (and unspecified `data`) on failure.
    fn open(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8], tag: &[u8; 16]) -> bool;
}

/// A set of primitives SRTP can run on.
pub trait CryptoProvider: 'static {
    /// AES-CM implementation.
    type Ctr: AesCtr;
    /// AES-GCM implementation.
    type Gcm: AesGcm;
}

/// HMAC-SHA1 keyed once; each packet clones the absorbed inner/outer state.
#[derive(Clone)]
pub(crate) struct HmacSha1(Hmac<Sha1>);

impl std::fmt::Debug for HmacSha1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSha1(..)")
    }
}

impl HmacSha1 {
    pub(crate) fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        Self(<Hmac<Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }

    /// HMAC-SHA1 over `a || b`.
    #[inline]
    pub(crate) fn tag(&self, a: &[u8], b: &[u8]) -> [u8; 20] {
        let mut mac = self.0.clone();
        mac.update(a);
        mac.update(b);
        mac.finalize().into_bytes().into()
    }
}

/// The default provider: aws-lc-rs for AES-CTR and AES-GCM, RustCrypto for HMAC-SHA1.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsLc;

impl CryptoProvider for AwsLc {
    type Ctr = AwsLcCtr;
    type Gcm = AwsLcGcm;
}

/// aws-lc-rs AES-CTR.
pub struct AwsLcCtr(aws_lc_rs::cipher::EncryptingKey);

impl std::fmt::Debug for AwsLcCtr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsLcCtr(..)")
    }
}

impl AesCtr for AwsLcCtr {
    fn new(key: &[u8]) -> Result<Self, BadKey> {
        use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, UnboundCipherKey};
        let alg = match key.len() {
            16 => &AES_128,
            32 => &AES_256,
            _ => return Err(BadKey),
        };
        let key = UnboundCipherKey::new(alg, key).map_err(|_| BadKey)?;
        EncryptingKey::ctr(key).map(Self).map_err(|_| BadKey)
    }

    #[inline]
    fn apply_keystream(&self, iv: &[u8; 16], data: &mut [u8]) {
        use aws_lc_rs::cipher::EncryptionContext;
        use aws_lc_rs::iv::FixedLength;
        if data.is_empty() {
            return;
        }
        // CTR with a 16-byte IV on a CTR key cannot fail; the result carries only the IV back.
        let _ = self.0.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(*iv)));
    }
}

/// aws-lc-rs AES-GCM (`LessSafeKey`: the nonce comes from the SRTP index, which never repeats
/// under one key). [`AesGcm::seal_to`] seals out of place (`seal_out_of_place_scatter`, the same
/// stitched AES-GCM code): the payload copy it saves per subscriber took the forwarding core from
/// 4.26 / 4.15 µs to 4.05 / 4.01 µs per input packet (`cargo bench -p sluice-core --bench
/// forward`, GCM fan-out 4, A/B in one run).
pub struct AwsLcGcm(aws_lc_rs::aead::LessSafeKey);

impl std::fmt::Debug for AwsLcGcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsLcGcm(..)")
    }
}

impl AesGcm for AwsLcGcm {
    fn new(key: &[u8]) -> Result<Self, BadKey> {
        use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, LessSafeKey, UnboundKey};
        let alg = match key.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return Err(BadKey),
        };
        let key = UnboundKey::new(alg, key).map_err(|_| BadKey)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    #[inline]
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
        use aws_lc_rs::aead::{Aad, Nonce};
        let mut out = [0u8; 16];
        // Sealing only fails for inputs beyond GCM's 2^36-byte limit, far above any datagram.
        if let Ok(tag) = self.0.seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data) {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    #[inline]
    fn seal_to(&self, nonce: &[u8; 12], aad: &[u8], input: &[u8], output: &mut [u8]) -> [u8; 16] {
        use aws_lc_rs::aead::{Aad, Nonce};
        let mut tag = [0u8; 16];
        // Fails only beyond GCM's 2^36-byte input limit or for lengths that differ (a caller
        // bug); then, as `seal`, the tag is zero.
        let _ = self.0.seal_out_of_place_scatter(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), input, output, &[], &mut tag);
        tag
    }

    #[inline]
    fn open(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8], tag: &[u8; 16]) -> bool {
        use aws_lc_rs::aead::{Aad, Nonce};
        self.0.open_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), tag, data).is_ok()
    }
}

#[cfg(feature = "rustcrypto")]
pub use rustcrypto::{RustCrypto, RustCryptoCtr, RustCryptoGcm};

#[cfg(feature = "rustcrypto")]
mod rustcrypto {
    use super::{AesCtr, AesGcm, BadKey, CryptoProvider};
    use aes::cipher::{InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
    use aes_gcm::AeadInPlace;

    /// The pure-Rust provider: RustCrypto `aes` + `ctr`, `aes-gcm`, and `hmac`/`sha1`.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct RustCrypto;

    impl CryptoProvider for RustCrypto {
        type Ctr = RustCryptoCtr;
        type Gcm = RustCryptoGcm;
    }

    /// RustCrypto AES-CTR with a 128-bit big-endian counter (expanded key kept, IV per packet).
    #[expect(clippy::large_enum_variant, reason = "one per leg direction, built on the cold path; boxing would add a pointer chase per packet")]
    pub enum RustCryptoCtr {
        /// AES-128.
        A128(aes::Aes128),
        /// AES-256.
        A256(aes::Aes256),
    }

    impl std::fmt::Debug for RustCryptoCtr {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("RustCryptoCtr(..)")
        }
    }

    impl AesCtr for RustCryptoCtr {
        fn new(key: &[u8]) -> Result<Self, BadKey> {
            match key.len() {
                16 => aes::Aes128::new_from_slice(key).map(Self::A128).map_err(|_| BadKey),
                32 => aes::Aes256::new_from_slice(key).map(Self::A256).map_err(|_| BadKey),
                _ => Err(BadKey),
            }
        }

        #[inline]
        fn apply_keystream(&self, iv: &[u8; 16], data: &mut [u8]) {
            match self {
                Self::A128(k) => StreamCipherCoreWrapper::from_core(ctr::CtrCore::<aes::Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(k.clone(), iv.into()))
                    .apply_keystream(data),
                Self::A256(k) => StreamCipherCoreWrapper::from_core(ctr::CtrCore::<aes::Aes256, ctr::flavors::Ctr128BE>::inner_iv_init(k.clone(), iv.into()))
                    .apply_keystream(data),
            }
        }
    }

    /// RustCrypto AES-GCM.
    #[expect(clippy::large_enum_variant, reason = "one per leg direction, built on the cold path; boxing would add a pointer chase per packet")]
    pub enum RustCryptoGcm {
        /// AES-128-GCM.
        A128(aes_gcm::Aes128Gcm),
        /// AES-256-GCM.
        A256(aes_gcm::Aes256Gcm),
    }

    impl std::fmt::Debug for RustCryptoGcm {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("RustCryptoGcm(..)")
        }
    }

    impl AesGcm for RustCryptoGcm {
        fn new(key: &[u8]) -> Result<Self, BadKey> {
            match key.len() {
                16 => aes_gcm::Aes128Gcm::new_from_slice(key).map(Self::A128).map_err(|_| BadKey),
                32 => aes_gcm::Aes256Gcm::new_from_slice(key).map(Self::A256).map_err(|_| BadKey),
                _ => Err(BadKey),
            }
        }

        #[inline]
        fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
            let r = match self {
                Self::A128(k) => k.encrypt_in_place_detached(nonce.into(), aad, data),
                Self::A256(k) => k.encrypt_in_place_detached(nonce.into(), aad, data),
            };
            r.map(Into::into).unwrap_or([0; 16])
        }

        #[inline]
        fn open(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8], tag: &[u8; 16]) -> bool {
            match self {
                Self::A128(k) => k.decrypt_in_place_detached(nonce.into(), aad, data, tag.into()),
                Self::A256(k) => k.decrypt_in_place_detached(nonce.into(), aad, data, tag.into()),
            }
            .is_ok()
        }
    }
}
