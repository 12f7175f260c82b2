//! Per-packet cost of SRTP protect/unprotect: every profile at 200 and 1200 bytes (RTP packet
//! length before protection), for the default provider (aws-lc-rs + RustCrypto HMAC-SHA1), the
//! pure-RustCrypto provider, and libsrtp2 (the system library) in the same run.
//!
//! Each iteration handles a new packet with the next sequence number (so replay protection on
//! both sides stays in play, as in production). Packets are prepared untimed in chunks of
//! [`CHUNK`] (about 100 KB, so the timed loop runs from L1/L2), and only the loop over a chunk
//! is timed.
//!
//! Clock: by default the THREAD CPU time (`CLOCK_THREAD_CPUTIME_ID`), minus the calibrated cost
//! of reading it, because the machines we bench on are shared 2-core VMs where wall time mostly
//! measures the neighbours. `SLUICE_BENCH_CLOCK=wall` switches to `Instant`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::srtp::provider::{AwsLc, CryptoProvider, RustCrypto};
use sluice_core::srtp::{Profile, RtpRecvState, RtpSendState, SrtpKeys};
use sluice_libsrtp::{Direction, LibProfile, LibSrtp, SRTP_MAX_TRAILER_LEN};
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CHUNK: usize = 64;

#[derive(Clone, Copy)]
enum Clock {
    Cpu(Duration),
    Wall,
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported
    // on Linux, and clock_gettime writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn clock() -> Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    *CLOCK.get_or_init(|| {
        if std::env::var("SLUICE_BENCH_CLOCK").as_deref() == Ok("wall") {
            return Clock::Wall;
        }
        // The cost of one start/stop pair: the minimum over many tries.
        let overhead = (0..10_000)
            .map(|_| {
                let a = thread_cpu_time();
                let b = thread_cpu_time();
                b.saturating_sub(a)
            })
            .min()
            .unwrap_or_default();
        eprintln!("bench clock: thread CPU time, {overhead:?} read overhead subtracted per chunk");
        Clock::Cpu(overhead)
    })
}

/// Times `routine` over `iters` inputs made by `setup`, chunk by chunk, setup untimed.
fn timed<S, R>(iters: u64, mut setup: impl FnMut() -> S, mut routine: impl FnMut(&mut S) -> R) -> Duration {
    let clock = clock();
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut chunk: Vec<S> = Vec::with_capacity(CHUNK);
    while left > 0 {
        let n = left.min(CHUNK as u64);
        chunk.clear();
        chunk.extend((0..n).map(|_| setup()));
        match clock {
            Clock::Cpu(overhead) => {
                let t0 = thread_cpu_time();
                for x in chunk.iter_mut() {
                    black_box(routine(x));
                }
                total += thread_cpu_time().saturating_sub(t0).saturating_sub(overhead);
            }
            Clock::Wall => {
                let t0 = Instant::now();
                for x in chunk.iter_mut() {
                    black_box(routine(x));
                }
                total += t0.elapsed();
            }
        }
        left -= n;
    }
    total
}

const PROFILES: [(Profile, LibProfile, &str); 4] = [
    (Profile::AesCm128HmacSha1_80, LibProfile::AesCm128HmacSha1_80, "AES_CM_128_HMAC_SHA1_80"),
    (Profile::AesCm128HmacSha1_32, LibProfile::AesCm128HmacSha1_32, "AES_CM_128_HMAC_SHA1_32"),
    (Profile::AeadAes128Gcm, LibProfile::AeadAes128Gcm, "AEAD_AES_128_GCM"),
    (Profile::AeadAes256Gcm, LibProfile::AeadAes256Gcm, "AEAD_AES_256_GCM"),
];
const SIZES: [usize; 2] = [200, 1200];
const SSRC: u32 = 0x1234_5678;
const CAP: usize = 1500 + SRTP_MAX_TRAILER_LEN;

type Pkt = ([u8; CAP], usize);

/// A WebRTC-shaped RTP packet: 12-byte header, one-word one-byte-header extension, payload.
fn packet(seq: u16, len: usize) -> Pkt {
    let mut b = [0u8; CAP];
    b[0] = 0x90;
    b[1] = 96;
    b[2..4].copy_from_slice(&seq.to_be_bytes());
    b[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    b[8..12].copy_from_slice(&SSRC.to_be_bytes());
    b[12..20].copy_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0x2a, 0, 0]);
    for (i, x) in b[20..len].iter_mut().enumerate() {
        *x = i as u8;
    }
    (b, len)
}

fn key_salt(p: Profile) -> (Vec<u8>, Vec<u8>) {
    ((0..p.key_len() as u8).collect(), (0..p.salt_len() as u8).map(|x| x ^ 0x5a).collect())
}

fn ours<P: CryptoProvider>(c: &mut Criterion, name: &str, profile: Profile, label: &str) {
    let (key, salt) = key_salt(profile);
    let keys = SrtpKeys::<P>::with_provider(profile, &key, &salt).unwrap();
    for size in SIZES {
        let mut g = c.benchmark_group(format!("protect/{label}/{size}"));
        g.throughput(Throughput::Elements(1));
        let mut tx = RtpSendState::new();
        let mut seq = 0u16;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || {
                        seq = seq.wrapping_add(1);
                        packet(seq, size)
                    },
                    |(buf, len)| keys.protect_rtp(&mut tx, buf, *len).unwrap(),
                )
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("unprotect/{label}/{size}"));
        g.throughput(Throughput::Elements(1));
        let mut tx = RtpSendState::new();
        let mut rx = RtpRecvState::new(128);
        let mut seq = 0u16;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || {
                        seq = seq.wrapping_add(1);
                        let (mut buf, len) = packet(seq, size);
                        let n = keys.protect_rtp(&mut tx, &mut buf, len).unwrap();
                        (buf, n)
                    },
                    |(buf, len)| keys.unprotect_rtp(&mut rx, buf, *len).unwrap(),
                )
            })
        });
        g.finish();
    }
}

fn libsrtp(c: &mut Criterion, profile: Profile, lib: LibProfile, label: &str) {
    let (key, salt) = key_salt(profile);
    for size in SIZES {
        let mut g = c.benchmark_group(format!("protect/{label}/{size}"));
        g.throughput(Throughput::Elements(1));
        let mut tx = LibSrtp::new(lib, &key, &salt, SSRC, Direction::Outbound).unwrap();
        let mut seq = 0u16;
        g.bench_function("libsrtp", |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || {
                        seq = seq.wrapping_add(1);
                        packet(seq, size)
                    },
                    |(buf, len)| tx.protect(buf, *len).unwrap(),
                )
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("unprotect/{label}/{size}"));
        g.throughput(Throughput::Elements(1));
        let mut tx = LibSrtp::new(lib, &key, &salt, SSRC, Direction::Outbound).unwrap();
        let mut rx = LibSrtp::new(lib, &key, &salt, SSRC, Direction::Inbound).unwrap();
        let mut seq = 0u16;
        g.bench_function("libsrtp", |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || {
                        seq = seq.wrapping_add(1);
                        let (mut buf, len) = packet(seq, size);
                        let n = tx.protect(&mut buf, len).unwrap();
                        (buf, n)
                    },
                    |(buf, len)| rx.unprotect(buf, *len).unwrap(),
                )
            })
        });
        g.finish();
    }
}

/// The HMAC-SHA1 choice behind the CM profiles: RustCrypto `hmac`+`sha1` (keyed state cloned
/// per packet) against aws-lc-rs `hmac` (HMAC_CTX copied per packet).
fn hmac_sha1(c: &mut Criterion) {
    use hmac::Mac;
    let key = [7u8; 20];
    let rc = <hmac::Hmac<sha1::Sha1> as Mac>::new_from_slice(&key).unwrap();
    let lc = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key);
    for size in SIZES {
        let data = vec![0x42u8; size];
        let mut g = c.benchmark_group(format!("hmac-sha1/{size}"));
        g.bench_function("rustcrypto", |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || (),
                    |_| {
                        let mut m = rc.clone();
                        m.update(black_box(&data));
                        m.update(&[0, 0, 0, 1]);
                        m.finalize().into_bytes()
                    },
                )
            })
        });
        g.bench_function("aws-lc-rs", |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || (),
                    |_| {
                        let mut m = aws_lc_rs::hmac::Context::with_key(&lc);
                        m.update(black_box(&data));
                        m.update(&[0, 0, 0, 1]);
                        m.sign()
                    },
                )
            })
        });
        g.finish();
    }
}

/// The bare aws-lc-rs AES-128-GCM seal on the same payload/AAD split, to show what the SRTP
/// layer adds on top of the primitive.
fn gcm_raw(c: &mut Criterion) {
    use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[3u8; 16]).unwrap());
    for size in SIZES {
        let mut g = c.benchmark_group(format!("aes-128-gcm-seal/{size}"));
        let mut n = 0u64;
        g.bench_function("aws-lc-rs", |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || packet(0, size),
                    |(buf, len)| {
                        n += 1;
                        let mut nonce = [0u8; 12];
                        nonce[4..].copy_from_slice(&n.to_be_bytes());
                        let (hdr, payload) = buf[..*len].split_at_mut(20);
                        key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&*hdr), payload).unwrap()
                    },
                )
            })
        });
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    gcm_raw(c);
    hmac_sha1(c);
    for (profile, lib, label) in PROFILES {
        ours::<AwsLc>(c, "aws-lc-rs", profile, label);
        ours::<RustCrypto>(c, "rustcrypto", profile, label);
        libsrtp(c, profile, lib, label);
    }
}

criterion_group!(srtp, benches);
criterion_main!(srtp);
