//! The writing side: descriptors for tests, fuzzing and simulated publishers.

use super::*;

/// Encodes `d` (resolved against `s`) into `out` and returns its length: 3 bytes when the frame
/// follows its template exactly and there is nothing else to say, more otherwise. The structure
/// is attached when `d.carries_structure`; the bitmask is written when `d.active_decode_targets`
/// is set, unless the structure is attached and every decode target is active (that is implied).
/// DTIs, frame differences and chain differences that differ from the template's are written as
/// custom fields, each fdiff in the smallest size.
///
/// `OutOfRange` when `d` does not fit `s` (unknown template id, layers or counts that differ from
/// the template's, bitmask or DTI bits past the last decode target); `BufferTooSmall` when `out`
/// is.
pub fn write(out: &mut [u8], d: &Descriptor, s: &Structure) -> Result<usize, WireError> {
    let t = s.template(d.template_id).ok_or(WireError::OutOfRange)?;
    let all = s.all_decode_targets();
    let consistent = (d.spatial_id, d.temporal_id) == (t.spatial_id, t.temporal_id)
        && d.decode_targets == s.dt_cnt
        && d.chain_cnt == s.chain_cnt
        && d.dtis.0 & !all_dti_bits(s.dt_cnt) == 0
        && d.active_decode_targets.is_none_or(|m| m & !all == 0);
    if !consistent {
        return Err(WireError::OutOfRange);
    }
    let mask = d.active_decode_targets.filter(|&m| !(d.carries_structure && m == all));
    let custom_dtis = d.dtis != t.dtis;
    let custom_fdiffs = !d.fdiffs().iter().copied().eq(t.fdiffs().iter().map(|&f| u16::from(f)));
    let custom_chains = d.chain_fdiffs() != t.chain_fdiffs();
    let extended = d.carries_structure || mask.is_some() || custom_dtis || custom_fdiffs || custom_chains;

    let mut w = BitWriter { buf: out, pos: 0 };
    w.f(1, u32::from(d.start_of_frame))?;
    w.f(1, u32::from(d.end_of_frame))?;
    w.f(6, u32::from(d.template_id))?;
    w.f(16, u32::from(d.frame_number))?;
    if extended {
        for flag in [d.carries_structure, mask.is_some(), custom_dtis, custom_fdiffs, custom_chains] {
            w.f(1, u32::from(flag))?;
        }
        if d.carries_structure {
            write_structure(&mut w, s)?;
        }
        if let Some(m) = mask {
            w.f(u32::from(s.dt_cnt), m)?;
        }
        if custom_dtis {
            for dt in 0..s.dt_cnt {
                w.f(2, d.dtis.get(dt) as u32)?;
            }
        }
        if custom_fdiffs {
            for &f in d.fdiffs() {
                let size = match f - 1 {
                    0..=0xf => 1,
                    0x10..=0xff => 2,
                    _ => 3,
                };
                w.f(2, size)?;
                w.f(4 * size, u32::from(f - 1))?;
            }
            w.f(2, 0)?;
        }
        if custom_chains {
            for &c in d.chain_fdiffs() {
                w.f(8, u32::from(c))?;
            }
        }
    }
    let len = w.pos.div_ceil(8);
    // zero_padding
    let pad = (len * 8 - w.pos) as u32;
    w.f(pad, 0)?;
    Ok(len)
}

fn write_structure(w: &mut BitWriter<'_>, s: &Structure) -> Result<(), WireError> {
    w.f(6, u32::from(s.template_id_offset))?;
    w.f(5, u32::from(s.dt_cnt) - 1)?;
    let templates = s.templates();
    for pair in templates.windows(2) {
        let idc = next_layer_idc(&pair[0], pair[1].spatial_id, pair[1].temporal_id).ok_or(WireError::OutOfRange)?;
        w.f(2, idc)?;
    }
    w.f(2, 3)?;
    for t in templates {
        for dt in 0..s.dt_cnt {
            w.f(2, t.dtis.get(dt) as u32)?;
        }
    }
    for t in templates {
        for &f in t.fdiffs() {
            w.f(1, 1)?;
            w.f(4, u32::from(f) - 1)?;
        }
        w.f(1, 0)?;
    }
    w.ns(u32::from(s.dt_cnt) + 1, u32::from(s.chain_cnt))?;
    if s.chain_cnt > 0 {
        for &p in &s.protected_by[..usize::from(s.dt_cnt)] {
            w.ns(u32::from(s.chain_cnt), u32::from(p))?;
        }
        for t in templates {
            for &c in t.chain_fdiffs() {
                w.f(4, u32::from(c))?;
            }
        }
    }
    w.f(1, u32::from(s.resolution_cnt > 0))?;
    for r in &s.resolutions[..usize::from(s.resolution_cnt)] {
        w.f(16, r.width - 1)?;
        w.f(16, r.height - 1)?;
    }
    Ok(())
}

/// `next_layer_idc` from template `prev` to one of (`spatial_id`, `temporal_id`), if the wire
/// format can express that step.
pub(super) fn next_layer_idc(prev: &Template, spatial_id: u8, temporal_id: u8) -> Option<u32> {
    if (spatial_id, temporal_id) == (prev.spatial_id, prev.temporal_id) {
        Some(0)
    } else if spatial_id == prev.spatial_id && u16::from(temporal_id) == u16::from(prev.temporal_id) + 1 {
        Some(1)
    } else if u16::from(spatial_id) == u16::from(prev.spatial_id) + 1 && temporal_id == 0 {
        Some(2)
    } else {
        None
    }
}

/// The writing side of [`BitReader`]; it overwrites the bits it writes and no others.
pub(super) struct BitWriter<'a> {
    pub(super) buf: &'a mut [u8],
    pub(super) pos: usize,
}

impl BitWriter<'_> {
    /// `f(n)` with the low `n` bits of `v`, `n` ≤ 32.
    pub(super) fn f(&mut self, n: u32, v: u32) -> Result<(), WireError> {
        if n > 32 || self.pos + n as usize > self.buf.len() * 8 {
            return Err(WireError::BufferTooSmall);
        }
        for i in (0..n).rev() {
            let bit = 0x80u8 >> (self.pos % 8);
            let byte = &mut self.buf[self.pos / 8];
            if (u64::from(v) >> i) & 1 == 1 {
                *byte |= bit;
            } else {
                *byte &= !bit;
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// §A.8.2 `write_ns(n, v)`.
    pub(super) fn ns(&mut self, n: u32, v: u32) -> Result<(), WireError> {
        let w = u32::BITS - n.leading_zeros();
        let m = (1u32 << w) - n;
        if v < m { self.f(w.saturating_sub(1), v) } else { self.f(w, v + m) }
    }
}
