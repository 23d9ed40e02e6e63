//! What a lazily restored process did to its address space since it started, as userfaultfd
//! reported it (`UNMAP`, `REMOVE`, `REMAP` events), and what that means for the image's
//! pages: a page unmapped or discarded no longer has image content (it is zero, or something
//! new, from then on); a page moved by `mremap` has its image content at its new address.
//!
//! The process blocks in `munmap`/`madvise`/`mremap` until ferry has read the event, so a
//! pager that records each change before placing more pages never puts stale content where
//! the process expects zeros or new data.

/// One change, in the order they happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `[start, end)` lost its image content.
    Forget(u64, u64),
    /// `mremap`: `len` bytes from `from` now live at `to` (and `from` holds nothing).
    Move { from: u64, to: u64, len: u64 },
}

#[derive(Debug, Default, Clone)]
pub struct Changes {
    ops: Vec<Op>,
}

impl Changes {
    pub fn forget(&mut self, start: u64, end: u64) {
        if start < end {
            self.ops.push(Op::Forget(start, end));
        }
    }

    pub fn moved(&mut self, from: u64, to: u64, len: u64) {
        self.ops.push(Op::Move { from, to, len });
        self.ops.push(Op::Forget(from, from + len));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Where the image page at `addr` lives now, if its image content still applies.
    pub fn current(&self, addr: u64) -> Option<u64> {
        let mut a = addr;
        for op in &self.ops {
            match *op {
                Op::Forget(s, e) if s <= a && a < e => return None,
                Op::Move { from, to, len } if from <= a && a < from + len => a = to + (a - from),
                _ => {}
            }
        }
        Some(a)
    }

    /// Which image page belongs at address `addr` now (`None`: none does — fresh memory).
    pub fn image(&self, addr: u64) -> Option<u64> {
        let mut a = addr;
        for op in self.ops.iter().rev() {
            match *op {
                Op::Forget(s, e) if s <= a && a < e => return None,
                Op::Move { from, to, len } if to <= a && a < to + len => a = from + (a - to),
                _ => {}
            }
        }
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_changed() {
        let c = Changes::default();
        assert_eq!(c.current(0x1000), Some(0x1000));
        assert_eq!(c.image(0x1000), Some(0x1000));
    }

    #[test]
    fn unmapped_then_regrown_memory_is_fresh() {
        // brk shrinks the heap below 0x5000, then grows it again.
        let mut c = Changes::default();
        c.forget(0x5000, 0x9000);
        assert_eq!(c.image(0x6000), None);
        assert_eq!(c.current(0x6000), None);
        assert_eq!(c.image(0x4000), Some(0x4000));
    }

    #[test]
    fn moved_memory_keeps_its_content_at_the_new_place() {
        let mut c = Changes::default();
        c.moved(0x10000, 0x80000, 0x2000);
        assert_eq!(c.current(0x11000), Some(0x81000));
        assert_eq!(c.image(0x81000), Some(0x11000));
        // The old place holds nothing from the image any more.
        assert_eq!(c.image(0x11000), None);
        assert_eq!(c.current(0x20000), Some(0x20000));
        // Moved again, then part of it discarded.
        c.moved(0x80000, 0x90000, 0x2000);
        c.forget(0x91000, 0x92000);
        assert_eq!(c.current(0x10000), Some(0x90000));
        assert_eq!(c.current(0x11000), None);
        assert_eq!(c.image(0x90000), Some(0x10000));
        assert_eq!(c.image(0x91000), None);
    }

    #[test]
    fn memory_moved_into_a_forgotten_range_is_not_forgotten() {
        let mut c = Changes::default();
        c.forget(0x40000, 0x50000);
        c.moved(0x10000, 0x40000, 0x1000);
        assert_eq!(c.image(0x40000), Some(0x10000));
        assert_eq!(c.image(0x41000), None);
    }
}
