//! Where each page of a migrating process sits in its page stream.
//!
//! Pages always travel in the order of the image's page runs (`memory.pages.runs`), so a page's
//! offset in any stream (a store file, `pages.img`, the bulk stream) follows from the runs.
//! [`PageMap`] answers "is this page in the image, and at which offset?" for fault handling.

use ferry_image::{PAGE_SIZE, PageRun};

#[derive(Debug, Clone, Default)]
pub struct PageMap {
    runs: Vec<PageRun>,
    /// Stream offset of the first byte of each run.
    offsets: Vec<u64>,
    total: u64,
}

impl PageMap {
    pub fn new(runs: &[PageRun]) -> PageMap {
        let mut offsets = Vec::with_capacity(runs.len());
        let mut total = 0u64;
        for r in runs {
            offsets.push(total);
            total += r.len();
        }
        PageMap {
            runs: runs.to_vec(),
            offsets,
            total,
        }
    }

    /// Stream offset of the page containing `addr`, if that page is in the image.
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        let page = addr & !(PAGE_SIZE - 1);
        let i = match self.runs.binary_search_by(|r| r.addr.cmp(&page)) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        let r = &self.runs[i];
        (page < r.end()).then(|| self.offsets[i] + (page - r.addr))
    }

    /// The longest stretch of image pages starting at `addr` (at most `max_pages`), within one
    /// run: (offset, pages).
    pub fn stretch(&self, addr: u64, max_pages: u64) -> Option<(u64, u64)> {
        let page = addr & !(PAGE_SIZE - 1);
        let off = self.offset_of(page)?;
        let i = self.runs.partition_point(|r| r.end() <= page);
        let left = (self.runs[i].end() - page) / PAGE_SIZE;
        Some((off, left.min(max_pages).max(1)))
    }

    /// Address of the page at stream offset `offset`.
    pub fn addr_at(&self, offset: u64) -> Option<u64> {
        let i = self
            .offsets
            .partition_point(|&o| o <= offset)
            .checked_sub(1)?;
        let r = self.runs.get(i)?;
        let within = offset - self.offsets[i];
        (within < r.len()).then_some(r.addr + within)
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> PageMap {
        PageMap::new(&[
            PageRun {
                addr: 0x10000,
                pages: 2,
            },
            PageRun {
                addr: 0x20000,
                pages: 3,
            },
        ])
    }

    #[test]
    fn locates_pages_by_address_and_offset() {
        let m = map();
        assert_eq!(m.total_bytes(), 5 * PAGE_SIZE);
        assert_eq!(m.offset_of(0x10000), Some(0));
        assert_eq!(m.offset_of(0x11234), Some(PAGE_SIZE));
        assert_eq!(m.offset_of(0x12000), None);
        assert_eq!(m.offset_of(0xf000), None);
        assert_eq!(m.offset_of(0x22fff), Some(4 * PAGE_SIZE));
        assert_eq!(m.offset_of(0x23000), None);
        assert_eq!(m.addr_at(0), Some(0x10000));
        assert_eq!(m.addr_at(2 * PAGE_SIZE), Some(0x20000));
        assert_eq!(m.addr_at(5 * PAGE_SIZE), None);
        assert_eq!(m.stretch(0x20000, 16), Some((2 * PAGE_SIZE, 3)));
        assert_eq!(m.stretch(0x21000, 1), Some((3 * PAGE_SIZE, 1)));
        assert_eq!(m.stretch(0x30000, 4), None);
    }
}
