//! Pre-copy at the destination: pages that arrive while the process still runs at the source,
//! kept (newest copy wins) until the final state says which of them the process still has.

use std::collections::BTreeMap;

use ferry_image::{PAGE_SIZE, PageRun};

/// Pages by address, in large slabs (no per-page allocation).
#[derive(Default)]
pub struct Staging {
    /// Page address → (slab, offset in slab).
    index: BTreeMap<u64, (usize, usize)>,
    slabs: Vec<Vec<u8>>,
}

const SLAB: usize = 16 << 20;

impl Staging {
    pub fn new() -> Staging {
        Staging::default()
    }

    /// Keeps `data` (whole pages) as the content of the pages from `addr`.
    pub fn put(&mut self, addr: u64, data: &[u8]) {
        for (i, page) in data.chunks_exact(PAGE_SIZE as usize).enumerate() {
            let a = addr + i as u64 * PAGE_SIZE;
            if let Some(&(s, o)) = self.index.get(&a) {
                self.slabs[s][o..o + page.len()].copy_from_slice(page);
                continue;
            }
            let need_new = self
                .slabs
                .last()
                .is_none_or(|s| s.len() + page.len() > s.capacity());
            if need_new {
                self.slabs.push(Vec::with_capacity(SLAB));
            }
            let s = self.slabs.len() - 1;
            let slab = &mut self.slabs[s];
            let o = slab.len();
            slab.extend_from_slice(page);
            self.index.insert(a, (s, o));
        }
    }

    pub fn pages(&self) -> usize {
        self.index.len()
    }

    /// The staged pages that the final `runs` contain, as `(address, bytes)` segments (each a
    /// page or a longer stretch contiguous in a slab), and the addresses of pages of `runs`
    /// never staged.
    pub fn for_runs(&self, runs: &[PageRun]) -> (Vec<(u64, &[u8])>, Vec<u64>) {
        // (address, slab, start, end) of stretches contiguous both in memory and in a slab.
        let mut stretches: Vec<(u64, usize, usize, usize)> = Vec::new();
        let mut missing = Vec::new();
        let page = PAGE_SIZE as usize;
        for r in runs {
            for p in 0..r.pages {
                let a = r.addr + p * PAGE_SIZE;
                let Some(&(s, o)) = self.index.get(&a) else {
                    missing.push(a);
                    continue;
                };
                match stretches.last_mut() {
                    Some(last)
                        if last.1 == s && last.3 == o && last.0 + (last.3 - last.2) as u64 == a =>
                    {
                        last.3 += page;
                    }
                    _ => stretches.push((a, s, o, o + page)),
                }
            }
        }
        let have = stretches
            .into_iter()
            .map(|(a, s, start, end)| (a, &self.slabs[s][start..end]))
            .collect();
        (have, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_copy_wins_and_gaps_are_reported() {
        let mut st = Staging::new();
        st.put(0x1000, &[1u8; 3 * 4096]);
        st.put(0x2000, &[9u8; 4096]);
        st.put(0x9000, &[7u8; 4096]);
        assert_eq!(st.pages(), 4);
        let runs = [
            PageRun {
                addr: 0x1000,
                pages: 4,
            },
            PageRun {
                addr: 0x9000,
                pages: 1,
            },
        ];
        let (have, missing) = st.for_runs(&runs);
        assert_eq!(missing, vec![0x4000]);
        let mut flat: Vec<(u64, u8)> = Vec::new();
        for (a, bytes) in &have {
            for (i, page) in bytes.chunks(4096).enumerate() {
                flat.push((a + i as u64 * 4096, page[0]));
            }
        }
        assert_eq!(
            flat,
            vec![(0x1000, 1), (0x2000, 9), (0x3000, 1), (0x9000, 7)]
        );
        // Contiguous pages contiguous in the slab travel as one segment.
        assert_eq!(have[0], (0x1000, &st.slabs[0][0..3 * 4096]));
    }
}
