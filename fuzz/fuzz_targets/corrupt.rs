//! What the file-reader fuzz targets share: corrupting a good file as the input says.

/// Flips the bytes the input names (2-byte position, mask) and, when the first byte is odd, cuts
/// `first >> 1` bytes off the end.
pub fn corrupt(good: &[u8], data: &[u8]) -> Vec<u8> {
    let mut bad = good.to_vec();
    let Some((&cut, rest)) = data.split_first() else { return bad };
    for c in rest.chunks_exact(3) {
        let at = usize::from(u16::from_be_bytes([c[0], c[1]])) % bad.len().max(1);
        if let Some(b) = bad.get_mut(at) {
            *b ^= c[2].max(1);
        }
    }
    if cut & 1 == 1 {
        bad.truncate(bad.len().saturating_sub(usize::from(cut >> 1)));
    }
    bad
}
