use super::*;

// Test vectors captured from Chrome and published with Jitsi's AV1 support
// (github.com/jitsi/jitsi-videobridge):
// rtp/src/test/kotlin/org/jitsi/rtp/rtp/header_extensions/Av1DependencyDescriptorHeaderExtensionTest.kt
// (Chrome 110 single-layer, Chrome 112 three spatial × three temporal layers) and
// jitsi-media-transform/src/test/kotlin/org/jitsi/nlj/rtp/codec/av1/Av1DDPacketTest.kt (whole
// RTP packets; only the extension value is taken here).

/// Chrome 110, one layer: keyframes at three resolutions, each with a new structure.
const CHROME_L1T1_KEY: [&str; 3] = ["80000180003a410180ef808680", "82007780403a4101813f80b380", "8400d380803a410181df810d80"];
/// Chrome 110: descriptors without extended fields.
const CHROME_L1T1_SHORT: [&str; 3] = ["400001", "870235", "07023a"];
/// Chrome 112, L3T3 keyframe: the structure, with resolutions.
const CHROME_L3T3_KEY: &str = "d0013481e81485214eafffaaaa863cf0430c10c302afc0aaa0063c00430010c002a000a800060000\
    40001d954926e082b04a0941b820ac1282503157f974000ca864330e222222eca8655304224230ec\
    a87753013f00b3027f016704ff02cf";
/// Chrome 112, a later L3T3 packet with an explicit active-decode-targets bitmask.
const CHROME_L3T3_MID: &str = "d10146401c";
/// Av1DDPacketTest "scalable keyframe": an L3T3_KEY structure.
const CHROME_L3T3_KEY_SVC: &str = "8003ca80081485214eaaaaa8000600004000100002aa80a80006\
    00004000100002a000a800060000400016d549241b5524906d54923157e001974ca864330e222396eca8655304224390eca87753013f00b3\
    027f016704ff02cf";
/// Av1DDPacketTest "scalable following packet changing available DTs".
const CHROME_L3T3_KEY_SVC_NEXT: &str = "c303cd401c";
/// Av1DDPacketTest "temporally-scalable portrait-mode keyframe".
const CHROME_L1T3_PORTRAIT: &str = "8023c58002044eaaaf2860414d34538a094040b3c13fc0";

fn bytes(h: &str) -> Vec<u8> {
    hex::decode(h).expect("test vector is hex")
}

/// Reads a descriptor that carries its structure; returns both.
fn read_key(h: &str) -> (Descriptor, Box<Structure>) {
    let mut s = Box::<Structure>::default();
    let d = read(&bytes(h), None, &mut s).expect("keyframe descriptor parses");
    assert!(d.carries_structure);
    (d, s)
}

/// A test-only bit string: '0' and '1', anything else ignored, zero-padded to the byte.
fn from_bits(s: &str) -> Vec<u8> {
    let bits: Vec<bool> = s.chars().filter(|c| matches!(c, '0' | '1')).map(|c| c == '1').collect();
    bits.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |b, (i, &bit)| b | (u8::from(bit) << (7 - i)))).collect()
}

struct T<'a> {
    s: u8,
    t: u8,
    dtis: &'a str,
    fdiffs: &'a [u8],
    chains: &'a [u8],
}

fn t<'a>(s: u8, t: u8, dtis: &'a str, fdiffs: &'a [u8], chains: &'a [u8]) -> T<'a> {
    T { s, t, dtis, fdiffs, chains }
}

fn build(offset: u8, dt: u8, chains: u8, protected_by: &[u8], templates: &[T<'_>], resolutions: &[(u32, u32)]) -> Box<Structure> {
    let mut s = Box::new(Structure::new(offset, dt, chains, protected_by).expect("valid structure header"));
    for x in templates {
        s.push_template(x.s, x.t, Dtis::from_symbols(x.dtis).expect("DTI symbols"), x.fdiffs, x.chains).expect("valid template");
    }
    let res: Vec<Resolution> = resolutions.iter().map(|&(width, height)| Resolution { width, height }).collect();
    s.set_resolutions(&res).expect("one resolution per spatial layer");
    s
}

/// libwebrtc's ScalabilityStructureL1T3::DependencyStructure()
/// (modules/video_coding/svc/scalability_structure_full_svc.cc).
fn libwebrtc_l1t3() -> Box<Structure> {
    build(
        0,
        3,
        1,
        &[0, 0, 0],
        &[t(0, 0, "SSS", &[], &[0]), t(0, 0, "SSS", &[4], &[4]), t(0, 1, "-DS", &[2], &[2]), t(0, 2, "--D", &[1], &[1]), t(0, 2, "--D", &[1], &[3])],
        &[],
    )
}

/// libwebrtc's ScalabilityStructureL3T3::DependencyStructure() (same file), templates sorted
/// by layer as there.
pub(crate) fn libwebrtc_l3t3(offset: u8, resolutions: &[(u32, u32)]) -> Box<Structure> {
    build(
        offset,
        9,
        3,
        &[0, 0, 0, 1, 1, 1, 2, 2, 2],
        &[
            t(0, 0, "SSSRRRRRR", &[12], &[12, 11, 10]),
            t(0, 0, "SSSSSSSSS", &[], &[0, 0, 0]),
            t(0, 1, "-DS-RR-RR", &[6], &[6, 5, 4]),
            t(0, 2, "--D--R--R", &[3], &[3, 2, 1]),
            t(0, 2, "--D--R--R", &[3], &[9, 8, 7]),
            t(1, 0, "---SSSRRR", &[12, 1], &[1, 1, 1]),
            t(1, 0, "---SSSSSS", &[1], &[1, 1, 1]),
            t(1, 1, "----DS-RR", &[6, 1], &[7, 6, 5]),
            t(1, 2, "-----D--R", &[3, 1], &[4, 3, 2]),
            t(1, 2, "-----D--R", &[3, 1], &[10, 9, 8]),
            t(2, 0, "------SSS", &[12, 1], &[2, 1, 1]),
            t(2, 0, "------SSS", &[1], &[2, 1, 1]),
            t(2, 1, "-------DS", &[6, 1], &[8, 7, 6]),
            t(2, 2, "--------D", &[3, 1], &[5, 4, 3]),
            t(2, 2, "--------D", &[3, 1], &[11, 10, 9]),
        ],
        resolutions,
    )
}

/// libwebrtc's ScalabilityStructureL3T3Key::DependencyStructure()
/// (modules/video_coding/svc/scalability_structure_key_svc.cc).
pub(crate) fn libwebrtc_l3t3_key(offset: u8, resolutions: &[(u32, u32)]) -> Box<Structure> {
    build(
        offset,
        9,
        3,
        &[0, 0, 0, 1, 1, 1, 2, 2, 2],
        &[
            t(0, 0, "SSSSSSSSS", &[], &[0, 0, 0]),
            t(0, 0, "SSS------", &[12], &[12, 11, 10]),
            t(0, 1, "-DS------", &[6], &[6, 5, 4]),
            t(0, 2, "--D------", &[3], &[3, 2, 1]),
            t(0, 2, "--D------", &[3], &[9, 8, 7]),
            t(1, 0, "---SSSSSS", &[1], &[1, 1, 1]),
            t(1, 0, "---SSS---", &[12], &[1, 12, 11]),
            t(1, 1, "----DS---", &[6], &[7, 6, 5]),
            t(1, 2, "-----D---", &[3], &[4, 3, 2]),
            t(1, 2, "-----D---", &[3], &[10, 9, 8]),
            t(2, 0, "------SSS", &[1], &[2, 1, 1]),
            t(2, 0, "------SSS", &[12], &[2, 1, 12]),
            t(2, 1, "-------DS", &[6], &[8, 7, 6]),
            t(2, 2, "--------D", &[3], &[5, 4, 3]),
            t(2, 2, "--------D", &[3], &[11, 10, 9]),
        ],
        resolutions,
    )
}

/// The spec's A.10.2.1 example: L1T3 with decode targets 30, 15 and 7.5 fps, in that order.
fn spec_l1t3() -> Box<Structure> {
    build(
        0,
        3,
        1,
        &[0, 0, 0],
        &[t(0, 0, "SSS", &[], &[0]), t(0, 0, "SSS", &[4], &[4]), t(0, 1, "SD-", &[2], &[2]), t(0, 2, "D--", &[1], &[1]), t(0, 2, "D--", &[1], &[3])],
        &[],
    )
}

/// The spec's A.10.2.2 example: L3T3 full SVC, decode targets HD 30/15/7.5 fps, VGA 30/15/7.5,
/// QVGA 30/15/7.5, in that order.
fn spec_l3t3() -> Box<Structure> {
    build(
        0,
        9,
        3,
        &[2, 2, 2, 1, 1, 1, 0, 0, 0],
        &[
            t(0, 0, "SSSSSSSSS", &[], &[0, 0, 0]),
            t(0, 0, "RRRRRRSSS", &[12], &[12, 11, 10]),
            t(0, 1, "RR-RR-SD-", &[6], &[6, 5, 4]),
            t(0, 2, "R--R--D--", &[3], &[3, 2, 1]),
            t(0, 2, "R--R--D--", &[3], &[9, 8, 7]),
            t(1, 0, "SSSSSS---", &[1], &[1, 1, 1]),
            t(1, 0, "RRRSSS---", &[12, 1], &[1, 1, 1]),
            t(1, 1, "RR-SD----", &[6, 1], &[7, 6, 5]),
            t(1, 2, "R--D-----", &[3, 1], &[4, 3, 2]),
            t(1, 2, "R--D-----", &[3, 1], &[10, 9, 8]),
            t(2, 0, "SSS------", &[1], &[2, 1, 1]),
            t(2, 0, "SSS------", &[12, 1], &[2, 1, 1]),
            t(2, 1, "SD-------", &[6, 1], &[8, 7, 6]),
            t(2, 2, "D--------", &[3, 1], &[5, 4, 3]),
            t(2, 2, "D--------", &[3, 1], &[11, 10, 9]),
        ],
        &[],
    )
}

fn layers(s: &Structure) -> Vec<(u8, u8)> {
    (0..s.decode_targets()).map(|dt| s.decode_target_layers(dt).expect("in range")).collect()
}

fn rewrite(d: &Descriptor, s: &Structure) -> Vec<u8> {
    let mut out = [0u8; 256];
    let n = write(&mut out, d, s).expect("a parsed descriptor can be written");
    out[..n].to_vec()
}

#[test]
fn ns_matches_the_spec_table() {
    // §A.8.2: ns(5) encodes 0..=4 as 00, 01, 10, 110, 111.
    for (v, code) in [(0, "00"), (1, "01"), (2, "10"), (3, "110"), (4, "111")] {
        let mut buf = [0u8; 1];
        let mut w = BitWriter { buf: &mut buf, pos: 0 };
        w.ns(5, v).unwrap();
        assert_eq!(w.pos, code.len(), "value {v}");
        assert_eq!(buf, from_bits(code)[..], "value {v}");
        let mut r = BitReader { buf: &buf, pos: 0 };
        assert_eq!(r.ns(5), Ok(v));
        assert_eq!(r.pos, code.len());
    }
    for n in 1..=33 {
        for v in 0..n {
            let mut buf = [0u8; 1];
            BitWriter { buf: &mut buf, pos: 0 }.ns(n, v).unwrap();
            assert_eq!(BitReader { buf: &buf, pos: 0 }.ns(n), Ok(v), "ns({n}) of {v}");
        }
    }
}

#[test]
fn chrome_single_layer_keyframes() {
    // Resolutions and offsets decoded by hand from the bits: 480x270 at template offset 0,
    // 640x360 at 2, 960x540 at 4 (Chrome ramping up after a start).
    let expect = [(0, 0x0001, 480, 270), (2, 0x0077, 640, 360), (4, 0x00d3, 960, 540)];
    for (h, (offset, frame, width, height)) in CHROME_L1T1_KEY.iter().zip(expect) {
        let (d, s) = read_key(h);
        assert!(d.start_of_frame && !d.end_of_frame);
        assert_eq!((d.template_id, d.frame_number), (offset, frame));
        assert_eq!((d.spatial_id, d.temporal_id, d.dti(0)), (0, 0, Dti::Switch));
        assert_eq!(d.active_decode_targets, Some(1), "a structure activates every decode target");
        assert!(!d.has_active_decode_targets_bitmask());
        assert_eq!(d.resolution, Some(Resolution { width, height }));
        assert_eq!((s.template_id_offset(), s.decode_targets(), s.chains(), s.templates().len()), (offset, 1, 1, 2));
        assert_eq!(s.templates()[1].fdiffs(), &[1]);
        assert_eq!(s.templates()[1].chain_fdiffs(), &[1]);
        assert_eq!(layers(&s), [(0, 0)]);
        assert_eq!(rewrite(&d, &s), bytes(h), "re-encodes to Chrome's bytes");
    }
    // The end of frame 1, against the first structure.
    let (_, first) = read_key(CHROME_L1T1_KEY[0]);
    let mut fresh = Structure::default();
    let d = read(&bytes(CHROME_L1T1_SHORT[0]), Some(&first), &mut fresh).unwrap();
    assert!(!d.start_of_frame && d.end_of_frame && !d.carries_structure);
    assert_eq!((d.template_id, d.frame_number, d.active_decode_targets), (0, 1, None));
    assert_eq!(rewrite(&d, &first), bytes(CHROME_L1T1_SHORT[0]));
    // Template 7 belongs to a later structure than any of the three.
    for h in &CHROME_L1T1_SHORT[1..] {
        assert_eq!(read(&bytes(h), None, &mut fresh), Err(DdError::NoStructure));
        for k in CHROME_L1T1_KEY {
            let (_, known) = read_key(k);
            assert_eq!(read(&bytes(h), Some(&known), &mut fresh), Err(DdError::UnknownTemplate));
        }
    }
}

#[test]
fn chrome_l3t3_is_libwebrtc_l3t3() {
    let (d, s) = read_key(CHROME_L3T3_KEY);
    assert!(d.start_of_frame && d.end_of_frame);
    assert_eq!((d.frame_number, d.template_id, d.spatial_id, d.temporal_id), (0x0134, 16, 0, 0));
    assert_eq!(d.active_decode_targets, Some(0x1ff));
    assert_eq!(*s, *libwebrtc_l3t3(15, &[(320, 180), (640, 360), (1280, 720)]));
    // libwebrtc numbers decode targets spatial-major: dt = 3 × spatial + temporal.
    let expected: Vec<(u8, u8)> = (0..9).map(|dt| (dt / 3, dt % 3)).collect();
    assert_eq!(layers(&s), expected);
    assert_eq!(rewrite(&d, &s), bytes(CHROME_L3T3_KEY));

    let mut fresh = Structure::default();
    let mid = bytes(CHROME_L3T3_MID);
    let m = read(&mid, Some(&s), &mut fresh).unwrap();
    assert!(!m.carries_structure && m.has_active_decode_targets_bitmask());
    assert_eq!((m.frame_number, m.spatial_id, m.temporal_id), (0x0146, 0, 1));
    assert_eq!(m.active_decode_targets, Some(0x7), "only the lowest spatial layer is sent");
    assert_eq!((m.fdiffs(), m.chain_fdiffs()), (&[6u16][..], &[6u8, 5, 4][..]));
    assert_eq!(m.dtis, Dtis::from_symbols("-DS-RR-RR").unwrap());
    assert_eq!(rewrite(&m, &s), mid);
    assert_eq!(read(&mid, None, &mut fresh), Err(DdError::NoStructure));
}

#[test]
fn chrome_l3t3_key_is_libwebrtc_l3t3_key() {
    let (d, s) = read_key(CHROME_L3T3_KEY_SVC);
    assert!(d.start_of_frame && !d.end_of_frame);
    assert_eq!((d.frame_number, d.template_id), (0x03ca, 0));
    assert_eq!(*s, *libwebrtc_l3t3_key(0, &[(320, 180), (640, 360), (1280, 720)]));
    let expected: Vec<(u8, u8)> = (0..9).map(|dt| (dt / 3, dt % 3)).collect();
    assert_eq!(layers(&s), expected);
    assert_eq!(rewrite(&d, &s), bytes(CHROME_L3T3_KEY_SVC));

    let mut fresh = Structure::default();
    let next = read(&bytes(CHROME_L3T3_KEY_SVC_NEXT), Some(&s), &mut fresh).unwrap();
    assert_eq!((next.frame_number, next.spatial_id, next.temporal_id), (0x03cd, 0, 2));
    assert_eq!(next.active_decode_targets, Some(0b111));
    assert_eq!(next.dti(2), Dti::Discardable);
    assert_eq!(next.dti(5), Dti::NotPresent, "K-SVC: an S0 delta frame is not in S1's decode targets");
    assert_eq!(s.decode_target_for_active(2, 2, 0b111), Some(2));
}

#[test]
fn chrome_portrait_l1t3() {
    let (d, s) = read_key(CHROME_L1T3_PORTRAIT);
    assert_eq!((d.frame_number, d.template_id), (0x23c5, 0));
    assert_eq!((s.decode_targets(), s.chains(), s.templates().len()), (3, 0, 7));
    assert_eq!(d.resolution, Some(Resolution { width: 720, height: 1280 }));
    assert_eq!(d.chain_fdiffs(), &[] as &[u8]);
    assert_eq!(s.decode_target_protected_by(0), None);
    assert_eq!(layers(&s), [(0, 0), (0, 1), (0, 2)]);
    assert_eq!(rewrite(&d, &s), bytes(CHROME_L1T3_PORTRAIT));
}

#[test]
fn libwebrtc_and_spec_decode_target_layers() {
    // libwebrtc's L1T3 numbers its 3 decode targets by frame rate, lowest first.
    let l1t3 = libwebrtc_l1t3();
    assert_eq!(layers(&l1t3), [(0, 0), (0, 1), (0, 2)]);
    assert_eq!(l1t3.decode_target_for(0, 1), Some(1));
    assert_eq!(l1t3.decode_target_for(3, 7), Some(2));
    // The spec's examples list the highest fidelity first.
    let spec = spec_l1t3();
    assert_eq!(layers(&spec), [(0, 2), (0, 1), (0, 0)]);
    assert_eq!(spec.decode_target_for(0, 0), Some(2));
    let spec = spec_l3t3();
    assert_eq!(layers(&spec), [(2, 2), (2, 1), (2, 0), (1, 2), (1, 1), (1, 0), (0, 2), (0, 1), (0, 0)]);
    assert_eq!(spec.decode_target_protected_by(0), Some(2));
    assert_eq!(spec.decode_target_for(1, 1), Some(4), "VGA 15 fps");
    // libwebrtc's L3T3 and L3T3_KEY: dt = 3 × spatial + temporal.
    for s in [libwebrtc_l3t3(0, &[]), libwebrtc_l3t3_key(0, &[])] {
        assert_eq!(layers(&s), (0..9).map(|dt| (dt / 3, dt % 3)).collect::<Vec<_>>());
        assert_eq!(s.decode_target_for(2, 2), Some(8));
        assert_eq!(s.decode_target_for(1, 2), Some(5));
        assert_eq!(s.decode_target_for(1, 1), Some(4));
        assert_eq!(s.decode_target_for(0, 0), Some(0));
        assert_eq!(s.decode_target_for(9, 0), Some(6));
        assert_eq!(s.decode_target_for_active(2, 2, 0b000_011_111), Some(4), "S1T2 inactive");
        assert_eq!(s.decode_target_for_active(2, 2, 0), None);
        assert_eq!(s.decode_target_layers(9), None);
    }
    // Every hand-built structure survives the wire, in a keyframe descriptor.
    for s in [l1t3, spec_l1t3(), spec_l3t3(), libwebrtc_l3t3(63, &[(320, 180), (640, 360), (1280, 720)]), libwebrtc_l3t3_key(5, &[])] {
        for i in 0..s.templates().len() {
            let mut d = s.descriptor(i, 0xfff0 + i as u16).unwrap();
            d.carries_structure = i == 0;
            let b = rewrite(&d, &s);
            let mut fresh = Structure::default();
            let known = if d.carries_structure { None } else { Some(&*s) };
            let back = read(&b, known, &mut fresh).unwrap();
            assert_eq!(back.active_decode_targets, d.carries_structure.then(|| all_decode_targets(s.decode_targets())));
            assert_eq!(Descriptor { active_decode_targets: None, ..back }, d);
            if d.carries_structure {
                assert_eq!(fresh, *s);
            } else {
                assert_eq!(b.len(), 3, "a frame that follows its template exactly costs 3 bytes");
            }
        }
    }
}

#[test]
fn custom_fields_round_trip() {
    // §A.10.1.3's dynamic structure: two quality layers, templates for the steady state, and
    // skipped S0 frames described with custom frame and chain differences.
    let s = build(
        0,
        2,
        2,
        &[0, 1],
        &[t(0, 0, "SS", &[], &[0, 0]), t(0, 0, "SS", &[2], &[2, 1]), t(1, 0, "-S", &[1], &[1, 1]), t(1, 0, "-S", &[1, 2], &[1, 1])],
        &[],
    );
    let mut fresh = Structure::default();
    // Frame 105 follows template 2 with chain 0 two frames back.
    let mut d = s.descriptor(2, 105).unwrap();
    d.set_chain_fdiffs(&[2, 1]).unwrap();
    let b = rewrite(&d, &s);
    assert_eq!(b.len(), 6, "24 mandatory bits, 5 flags, 2 × 8 bits of chains: 45 bits");
    assert_eq!(read(&b, Some(&s), &mut fresh), Ok(d));
    // Frame 108 (template 1) refers 5 frames back, and fdiffs of every size.
    let mut d = s.descriptor(1, 108).unwrap();
    d.set_fdiffs(&[5, 17, 256, 257, 4096]).unwrap();
    d.set_chain_fdiffs(&[5, 255]).unwrap();
    d.dtis = Dtis::from_symbols("RD").unwrap();
    d.active_decode_targets = Some(0b01);
    let b = rewrite(&d, &s);
    let back = read(&b, Some(&s), &mut fresh).unwrap();
    assert!(back.has_active_decode_targets_bitmask());
    assert_eq!(back.fdiffs(), &[5, 17, 256, 257, 4096]);
    assert_eq!(back.chain_fdiffs(), &[5, 255]);
    assert_eq!((back.dti(0), back.dti(1), back.dti(2)), (Dti::Required, Dti::Discardable, Dti::NotPresent));
    assert_eq!(Descriptor { mask_at: 0, ..back }, d);
    // An explicit empty list of references is custom too.
    let mut d = s.descriptor(3, 109).unwrap();
    d.set_fdiffs(&[]).unwrap();
    assert_eq!(read(&rewrite(&d, &s), Some(&s), &mut fresh).unwrap().fdiffs(), &[] as &[u16]);
    // Out of range values are refused by the setters and the writer.
    assert_eq!(d.set_fdiffs(&[0]), Err(WireError::OutOfRange));
    assert_eq!(d.set_fdiffs(&[4097]), Err(WireError::OutOfRange));
    assert_eq!(d.set_fdiffs(&[1; MAX_FDIFFS + 1]), Err(WireError::OutOfRange));
    assert_eq!(d.set_chain_fdiffs(&[1]), Err(WireError::OutOfRange));
    let mut bad = d;
    bad.spatial_id = 0;
    assert_eq!(write(&mut [0; 64], &bad, &s), Err(WireError::OutOfRange));
    let mut bad = d;
    bad.active_decode_targets = Some(0b100);
    assert_eq!(write(&mut [0; 64], &bad, &s), Err(WireError::OutOfRange));
    let mut bad = d;
    bad.template_id = 4;
    assert_eq!(write(&mut [0; 64], &bad, &s), Err(WireError::OutOfRange));
    assert_eq!(write(&mut [0; 2], &s.descriptor(0, 1).unwrap(), &s), Err(WireError::BufferTooSmall));
}

#[test]
fn builder_refuses_what_the_wire_cannot_say() {
    assert!(Structure::new(64, 1, 0, &[]).is_err());
    assert!(Structure::new(0, 0, 0, &[]).is_err());
    assert!(Structure::new(0, 33, 0, &[]).is_err());
    assert!(Structure::new(0, 2, 3, &[0, 1]).is_err());
    assert!(Structure::new(0, 2, 2, &[0, 2]).is_err());
    assert!(Structure::new(0, 2, 1, &[]).is_err());
    let mut s = Structure::new(0, 2, 1, &[0, 0]).unwrap();
    let ss = Dtis::from_symbols("SS").unwrap();
    assert!(s.push_template(0, 1, ss, &[], &[0]).is_err(), "first template is S0T0");
    s.push_template(0, 0, ss, &[], &[0]).unwrap();
    assert!(s.push_template(0, 2, ss, &[], &[0]).is_err(), "temporal ids step by one");
    assert!(s.push_template(2, 0, ss, &[], &[0]).is_err(), "spatial ids step by one");
    assert!(s.push_template(0, 0, Dtis::from_symbols("SSS").unwrap(), &[], &[0]).is_err(), "DTI past the last decode target");
    assert!(s.push_template(0, 0, ss, &[0], &[0]).is_err());
    assert!(s.push_template(0, 0, ss, &[17], &[0]).is_err());
    assert!(s.push_template(0, 0, ss, &[], &[16]).is_err());
    assert!(s.push_template(0, 0, ss, &[], &[]).is_err());
    assert!(s.set_resolutions(&[Resolution { width: 1, height: 1 }; 2]).is_err());
    assert!(s.set_resolutions(&[Resolution { width: 0, height: 1 }]).is_err());
    for _ in 1..MAX_TEMPLATES {
        s.push_template(0, 0, ss, &[1], &[1]).unwrap();
    }
    assert!(s.push_template(0, 0, ss, &[1], &[1]).is_err(), "64 templates at most");
    assert_eq!(Dtis::from_symbols("SX"), None);
    assert_eq!(Dtis::from_symbols(&"S".repeat(33)), None);
}

/// Mandatory fields (template 0, frame 1) and flags T=1 then the given bits.
fn with_structure(bits: &str) -> Vec<u8> {
    from_bits(&format!("10 000000 0000000000000001  1 0000 {bits}"))
}

#[test]
fn self_contradictory_descriptors_are_invalid() {
    let mut fresh = Structure::default();
    // offset 0, one decode target, templates S0T0 then temporal +1 seven times: T8.
    let t8 = with_structure(&format!("000000 00000 {} 11", "01 ".repeat(8)));
    assert_eq!(read(&t8, None, &mut fresh), Err(DdError::Invalid));
    let t7 = with_structure(&format!("000000 00000 {} 11 {} {} 0 0", "01 ".repeat(7), "10 ".repeat(8), "0 ".repeat(8)));
    let d = read(&t7, None, &mut fresh).unwrap();
    assert_eq!((fresh.templates().len(), fresh.max_temporal_id()), (8, 7));
    assert_eq!(d.resolution, None);
    // Spatial layers: S3 is the last one AV1 has.
    let s4 = with_structure(&format!("000000 00000 {} 11", "10 ".repeat(4)));
    assert_eq!(read(&s4, None, &mut fresh), Err(DdError::Invalid));
    // 65 templates.
    let many = with_structure(&format!("000000 00000 {} 11", "00 ".repeat(64)));
    assert_eq!(read(&many, None, &mut fresh), Err(DdError::Invalid));
    // A template with 16 frame differences.
    let fdiffs = with_structure(&format!("000000 00000 11 10 {} 0", "1 0000 ".repeat(MAX_FDIFFS + 1)));
    assert_eq!(read(&fdiffs, None, &mut fresh), Err(DdError::Invalid));
    let fdiffs = with_structure(&format!("000000 00000 11 10 {} 0 0 0", "1 0000 ".repeat(MAX_FDIFFS)));
    assert_eq!(read(&fdiffs, None, &mut fresh).map(|d| d.fdiffs().len()), Ok(MAX_FDIFFS));
    // The descriptor names template 1 of a structure it carries with only one.
    let mut b = with_structure("000000 00000 11 10 0 0 0");
    b[0] |= 1;
    assert_eq!(read(&b, None, &mut fresh), Err(DdError::Invalid));
    // 16 custom frame differences (F flag, against a known one-template structure).
    let known = build(0, 1, 0, &[], &[t(0, 0, "S", &[], &[])], &[]);
    let custom = from_bits(&format!("10 000000 0000000000000001  0 0 0 1 0 {} 00", "01 0000 ".repeat(MAX_FDIFFS + 1)));
    assert_eq!(read(&custom, Some(&known), &mut fresh), Err(DdError::Invalid));
    let custom = from_bits(&format!("10 000000 0000000000000001  0 0 0 1 0 {} 00", "01 0000 ".repeat(MAX_FDIFFS)));
    assert_eq!(read(&custom, Some(&known), &mut fresh).map(|d| d.fdiffs().len()), Ok(MAX_FDIFFS));
    // Zero padding may run on (a whole spare byte here) and is not checked.
    let mut padded = bytes(CHROME_L3T3_MID);
    padded.extend([0, 0xff]);
    let (_, l3t3) = read_key(CHROME_L3T3_KEY);
    assert_eq!(read(&padded, Some(&l3t3), &mut fresh).map(|d| d.frame_number), Ok(0x0146));
    // The error maps onto the drop counters.
    assert_eq!(WireError::from(DdError::Invalid), WireError::BadExtension);
    assert_eq!(WireError::from(DdError::UnknownTemplate), WireError::NoStructure);
    assert!(DdError::NoStructure.needs_keyframe() && !DdError::Truncated.needs_keyframe());
    assert!((WireError::NoStructure as usize) < WireError::COUNT);
}

#[test]
fn every_truncation_is_an_error() {
    let (_, l1t1) = read_key(CHROME_L1T1_KEY[0]);
    let (_, l3t3) = read_key(CHROME_L3T3_KEY);
    let (_, key) = read_key(CHROME_L3T3_KEY_SVC);
    let cases: [(&str, Option<&Structure>); 9] = [
        (CHROME_L1T1_KEY[0], None),
        (CHROME_L1T1_KEY[1], None),
        (CHROME_L1T1_KEY[2], None),
        (CHROME_L3T3_KEY, None),
        (CHROME_L3T3_KEY_SVC, None),
        (CHROME_L1T3_PORTRAIT, None),
        (CHROME_L1T1_SHORT[0], Some(&l1t1)),
        (CHROME_L3T3_MID, Some(&l3t3)),
        (CHROME_L3T3_KEY_SVC_NEXT, Some(&key)),
    ];
    let mut fresh = Structure::default();
    for (h, known) in cases {
        let b = bytes(h);
        assert!(read(&b, known, &mut fresh).is_ok(), "{h}");
        for n in 0..b.len() {
            let r = read(&b[..n], known, &mut fresh);
            match (n, known) {
                // Three bytes are a whole descriptor that names a template.
                (3, Some(_)) => assert!(r.is_ok(), "{h} at {n}"),
                (3, None) => assert_eq!(r, Err(DdError::NoStructure), "{h} at {n}"),
                _ => assert_eq!(r, Err(DdError::Truncated), "{h} at {n}"),
            }
        }
    }
}

#[test]
fn set_active_decode_targets_in_place() {
    let (_, l3t3) = read_key(CHROME_L3T3_KEY);
    let mut fresh = Structure::default();
    let orig = bytes(CHROME_L3T3_MID);
    let mut b = orig.clone();
    let d = read(&b, Some(&l3t3), &mut fresh).unwrap();
    for mask in [0x1ff, 0, 0b1_0101_0101, 0x7] {
        assert!(set_active_decode_targets(&mut b, &d, mask | 0xffff_fe00), "bits past decode target 8 are ignored");
        let back = read(&b, Some(&l3t3), &mut fresh).unwrap();
        assert_eq!(back.active_decode_targets, Some(mask));
        assert_eq!(Descriptor { active_decode_targets: d.active_decode_targets, ..back }, d);
    }
    assert_eq!(b, orig, "the bits around the bitmask are untouched");
    // No explicit bitmask: nothing to rewrite.
    let key = bytes(CHROME_L3T3_KEY);
    let (kd, _) = read_key(CHROME_L3T3_KEY);
    let mut k = key.clone();
    assert!(!set_active_decode_targets(&mut k, &kd, 0x7));
    assert_eq!(k, key);
    let short = bytes(CHROME_L1T1_SHORT[0]);
    let (_, l1t1) = read_key(CHROME_L1T1_KEY[0]);
    let sd = read(&short, Some(&l1t1), &mut fresh).unwrap();
    assert!(!set_active_decode_targets(&mut short.clone(), &sd, 1));
    // A buffer too short for the descriptor it came with.
    assert!(!set_active_decode_targets(&mut b[..4], &d, 0x7));
}

#[test]
fn random_bytes_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xdd);
    let (_, l3t3) = read_key(CHROME_L3T3_KEY);
    let mut fresh = Box::<Structure>::default();
    let mut buf = [0u8; 64];
    let mut out = [0u8; 512];
    for _ in 0..50_000 {
        let n = rng.random_range(0..buf.len());
        rng.fill(&mut buf[..n]);
        // Mostly structure-carrying, extended descriptors: the interesting part.
        if n > 3 && rng.random_bool(0.5) {
            buf[3] |= 0x80;
        }
        for known in [None, Some(&*l3t3)] {
            let Ok(d) = read(&buf[..n], known, &mut fresh) else { continue };
            let s: &Structure = if d.carries_structure { &fresh } else { &l3t3 };
            assert!(usize::from(d.spatial_id) < MAX_SPATIAL_IDS && usize::from(d.temporal_id) < MAX_TEMPORAL_IDS);
            let _ = set_active_decode_targets(&mut buf[..n], &d, rng.random());
            let len = write(&mut out, &d, s).expect("whatever parses can be written");
            let back = read(&out[..len], known, &mut Structure::default()).expect("what is written parses");
            assert_eq!(Descriptor { mask_at: back.mask_at, ..d }, back);
        }
    }
}
