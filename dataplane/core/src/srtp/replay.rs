//! The sliding replay window (RFC 3711 §3.3.2).
//!
//! The bitmap lives inline (up to [`MAX_WINDOW`] packets, 16 words), so a receive context is
//! one `Clone` value with no heap. Only the words the configured size needs are touched per
//! packet. Bit `k` of the bitmap stands for index `highest - k`.
//!
//! The packet path is split in two: [`ReplayWindow::check`] runs before any crypto (a replay is
//! rejected without spending a decrypt), [`ReplayWindow::update`] only after the packet
//! authenticated, so a forged packet cannot move the window.

use super::SrtpError;

/// Largest configurable window, in packets.
pub const MAX_WINDOW: u16 = 1024;
/// Smallest configurable window, in packets (RFC 3711 §3.3.2 asks for at least 64).
pub const MIN_WINDOW: u16 = 64;
/// Default window: 128 packets, as libsrtp and browsers use.
pub const DEFAULT_WINDOW: u16 = 128;

const WORDS: usize = MAX_WINDOW as usize / 64;

/// A replay window over 48-bit SRTP or 31-bit SRTCP indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    size: u16,
    started: bool,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW)
    }
}

impl ReplayWindow {
    /// A window of `size` packets, clamped to [`MIN_WINDOW`]..=[`MAX_WINDOW`] and rounded up
    /// to a multiple of 64.
    pub const fn new(size: u16) -> Self {
        let size = if size < MIN_WINDOW {
            MIN_WINDOW
        } else if size > MAX_WINDOW {
            MAX_WINDOW
        } else {
            size.div_ceil(64) * 64
        };
        Self { highest: 0, size, started: false, bits: [0; WORDS] }
    }

    /// A window that has accepted `highest` and everything below it (as far as it reaches): a
    /// stream resumed from a checkpoint, where no index at or below the checkpointed one may be
    /// accepted again.
    pub const fn resumed(size: u16, highest: u64) -> Self {
        let mut w = Self::new(size);
        w.started = true;
        w.highest = highest;
        w.bits = [u64::MAX; WORDS];
        w
    }

    /// The window size in packets.
    pub const fn size(&self) -> u16 {
        self.size
    }

    /// The highest authenticated index, if any packet was accepted yet.
    pub const fn highest(&self) -> Option<u64> {
        if self.started { Some(self.highest) } else { None }
    }

    const fn words(&self) -> usize {
        self.size as usize / 64
    }

    /// Rejects `index` if it was already accepted or fell out of the window.
    #[inline]
    pub fn check(&self, index: u64) -> Result<(), SrtpError> {
        if !self.started || index > self.highest {
            return Ok(());
        }
        let delta = self.highest - index;
        if delta >= u64::from(self.size) {
            return Err(SrtpError::IndexTooOld);
        }
        let (w, b) = ((delta / 64) as usize, delta % 64);
        if self.bits[w] >> b & 1 == 1 { Err(SrtpError::Replayed) } else { Ok(()) }
    }

    /// Records `index` as received; call only after [`check`](Self::check) passed and the
    /// packet authenticated.
    #[inline]
    pub fn update(&mut self, index: u64) {
        if !self.started {
            self.started = true;
            self.highest = index;
            self.bits = [0; WORDS];
            self.bits[0] = 1;
            return;
        }
        if index > self.highest {
            self.shift(index - self.highest);
            self.highest = index;
            self.bits[0] |= 1;
        } else {
            let delta = self.highest - index;
            if delta < u64::from(self.size) {
                self.bits[(delta / 64) as usize] |= 1 << (delta % 64);
            }
        }
    }

    fn shift(&mut self, by: u64) {
        let n = self.words();
        if by >= u64::from(self.size) {
            self.bits[..n].fill(0);
            return;
        }
        let (ws, bs) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..n).rev() {
            let lo = if i >= ws { self.bits[i - ws] } else { 0 };
            let carry = if bs != 0 && i > ws { self.bits[i - ws - 1] >> (64 - bs) } else { 0 };
            self.bits[i] = if bs == 0 { lo } else { lo << bs | carry };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, i: u64) -> Result<(), SrtpError> {
        w.check(i)?;
        w.update(i);
        Ok(())
    }

    #[test]
    fn duplicates_and_too_old() {
        let mut w = ReplayWindow::new(128);
        assert_eq!(accept(&mut w, 1000), Ok(()));
        assert_eq!(accept(&mut w, 1000), Err(SrtpError::Replayed));
        assert_eq!(accept(&mut w, 999), Ok(()));
        assert_eq!(accept(&mut w, 999), Err(SrtpError::Replayed));
        assert_eq!(accept(&mut w, 1000 - 127), Ok(()));
        assert_eq!(accept(&mut w, 1000 - 128), Err(SrtpError::IndexTooOld));
        assert_eq!(accept(&mut w, 1001), Ok(()));
        // 1000-127 is now 128 behind: out of the window.
        assert_eq!(w.check(1000 - 127), Err(SrtpError::IndexTooOld));
        assert_eq!(w.check(1000), Err(SrtpError::Replayed));
    }

    #[test]
    fn slide_keeps_marks_across_words() {
        for size in [64u16, 128, 200, 1024] {
            let mut w = ReplayWindow::new(size);
            let s = u64::from(w.size());
            for i in (0..3 * s).step_by(3) {
                accept(&mut w, i).unwrap();
            }
            let hi = w.highest().unwrap();
            for back in 0..s {
                let i = hi - back;
                let want = if i.is_multiple_of(3) { Err(SrtpError::Replayed) } else { Ok(()) };
                assert_eq!(w.check(i), want, "size {size} index {i}");
            }
            assert_eq!(w.check(hi - s), Err(SrtpError::IndexTooOld));
            // Slide by odd amounts and check marks moved exactly.
            let d = if s > 67 { 67 } else { 35 };
            accept(&mut w, hi + d).unwrap();
            assert_eq!(w.check(hi), Err(SrtpError::Replayed));
            assert_eq!(w.check(hi - 3), Err(SrtpError::Replayed));
            assert_eq!(w.check(hi - 2), Ok(()));
            assert_eq!(w.check(hi + 1), Ok(()));
            assert_eq!(w.check(hi + d - 1), Ok(()));
            // A jump larger than the window clears it.
            accept(&mut w, hi + d + s).unwrap();
            assert_eq!(w.check(hi + d), Err(SrtpError::IndexTooOld));
            assert_eq!(w.check(hi + d + 1), Ok(()));
        }
    }

    #[test]
    fn configurable_size_clamped() {
        assert_eq!(ReplayWindow::new(0).size(), 64);
        assert_eq!(ReplayWindow::new(100).size(), 128);
        assert_eq!(ReplayWindow::new(5000).size(), 1024);
        let mut w = ReplayWindow::new(1024);
        accept(&mut w, 5000).unwrap();
        assert_eq!(accept(&mut w, 5000 - 1023), Ok(()));
        assert_eq!(accept(&mut w, 5000 - 1024), Err(SrtpError::IndexTooOld));
    }

    #[test]
    fn check_does_not_mutate() {
        let mut w = ReplayWindow::new(128);
        accept(&mut w, 10).unwrap();
        let before = w.clone();
        let _ = w.check(11);
        let _ = w.check(10);
        assert_eq!(w, before);
    }
}
