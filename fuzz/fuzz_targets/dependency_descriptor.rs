//! AV1 dependency descriptors, read the way a track reads them: the input is a sequence of
//! length-prefixed extension values, and a structure, once received, resolves the descriptors
//! after it. Every accepted descriptor is re-encoded and read back, and its active-decode-targets
//! bitmask is rewritten in place.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_core::wire::dd::{self, Descriptor, Dti, MAX_SPATIAL_IDS, MAX_TEMPORAL_IDS, Structure};

/// Equal as values: everything but where in the bytes the bitmask sat.
fn same(a: &Descriptor, b: &Descriptor) -> bool {
    (a.start_of_frame, a.end_of_frame, a.template_id, a.frame_number, a.spatial_id, a.temporal_id)
        == (b.start_of_frame, b.end_of_frame, b.template_id, b.frame_number, b.spatial_id, b.temporal_id)
        && (a.dtis, a.decode_targets, a.active_decode_targets, a.carries_structure, a.resolution)
            == (b.dtis, b.decode_targets, b.active_decode_targets, b.carries_structure, b.resolution)
        && a.fdiffs() == b.fdiffs()
        && a.chain_fdiffs() == b.chain_fdiffs()
}

fn check(ext: &[u8], d: &Descriptor, s: &Structure, known: Option<&Structure>) {
    assert!(usize::from(d.spatial_id) < MAX_SPATIAL_IDS && usize::from(d.temporal_id) < MAX_TEMPORAL_IDS);
    let t = s.template(d.template_id).expect("an accepted descriptor names a template of its structure");
    assert_eq!((t.spatial_id(), t.temporal_id()), (d.spatial_id, d.temporal_id));
    assert_eq!(d.decode_targets, s.decode_targets());
    assert_eq!(d.chain_fdiffs().len(), usize::from(s.chains()));
    assert_eq!(d.dti(d.decode_targets), Dti::NotPresent);
    for dt in 0..s.decode_targets() {
        let (sid, tid) = s.decode_target_layers(dt).expect("in range");
        assert!(sid <= s.max_spatial_id() && tid <= s.max_temporal_id());
        if let Some(c) = s.decode_target_protected_by(dt) {
            assert!(c < s.chains());
        }
    }
    assert!(s.decode_target_for(s.max_spatial_id(), s.max_temporal_id()).is_some());

    // Re-encode and read back: same values, same structure.
    let mut out = [0u8; 2048];
    let len = dd::write(&mut out, d, s).expect("whatever parses can be written");
    let mut again = Structure::default();
    let back = dd::read(&out[..len], if d.carries_structure { None } else { known }, &mut again).expect("what is written parses");
    assert!(same(d, &back), "{d:?} became {back:?}");
    if d.carries_structure {
        assert_eq!(&again, s);
    }

    // The in-place bitmask rewrite touches nothing else.
    let mut copy = ext.to_vec();
    let mask = u32::from(d.frame_number).rotate_left(7) ^ 0x5555_5555;
    if dd::set_active_decode_targets(&mut copy, d, mask) {
        assert!(d.has_active_decode_targets_bitmask());
        let after = dd::read(&copy, known, &mut again).expect("a rewritten bitmask still parses");
        let all = if d.decode_targets >= 32 { u32::MAX } else { (1 << d.decode_targets) - 1 };
        assert_eq!(after.active_decode_targets, Some(mask & all));
        let mut after = after;
        after.active_decode_targets = d.active_decode_targets;
        assert!(same(&after, d));
    } else {
        assert!(!d.has_active_decode_targets_bitmask());
        assert_eq!(copy, ext);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut known: Option<Box<Structure>> = None;
    let mut fresh = Box::<Structure>::default();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (ext, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let Ok(d) = dd::read(ext, known.as_deref(), &mut fresh) else { continue };
        if d.carries_structure {
            check(ext, &d, &fresh, None);
            // The caller keeps the new structure.
            match &mut known {
                Some(k) => std::mem::swap(k, &mut fresh),
                None => known = Some(std::mem::take(&mut fresh)),
            }
        } else {
            let k = known.as_deref().expect("a descriptor without a structure is refused while none is known");
            check(ext, &d, k, Some(k));
        }
    }
});
