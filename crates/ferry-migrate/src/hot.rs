//! Freeze-free's first pages: the few the process needs the moment it resumes.
//!
//! The survey's freeze-free algorithm sends, with the execution state, the current code page
//! (from the program counter), the stack page(s) (from the stack pointer) and the heap pages
//! that the registers point into, and lets everything else follow. Here: the page of `rip`,
//! the page of `rsp` and the pages above it in the same run (the live frames, up to
//! [`STACK_PAGES`]), the page of `fs_base` (thread control block, TLS), and the page of every
//! general register that points into memory that travels — for every thread.

use ferry_image::{PAGE_SIZE, ProcessImage};

use crate::pages::PageMap;

/// Stack pages sent from the stack pointer upwards.
pub const STACK_PAGES: u64 = 4;

/// Stream offsets of the pages to send first, sorted, without duplicates (each a page).
pub fn hot_pages(image: &ProcessImage, map: &PageMap) -> Vec<u64> {
    let mut out = Vec::new();
    let mut take = |addr: u64, pages: u64| {
        if let Some((off, n)) = map.stretch(addr, pages) {
            for i in 0..n {
                out.push(off + i * PAGE_SIZE);
            }
        }
    };
    // Every thread resumes at once: each one's code, stack, TLS and pointed-to pages.
    for r in image.executions().map(|e| &e.regs) {
        take(r.rip, 1);
        take(r.rsp, STACK_PAGES);
        take(r.fs_base, 1);
        for v in [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15,
        ] {
            take(v, 1);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_image::model::tests_support::sample_image;

    #[test]
    fn picks_code_stack_tls_and_pointed_to_pages() {
        let mut image = sample_image();
        let map = PageMap::new(&image.memory.pages.runs);
        // The sample's runs: 0x5555_5555_7000 (1 page), heap 0x5555_5556_0000 (3),
        // stack 0x7ffd_0001_f000 (2).
        image.execution.regs.rip = 0x5555_5555_5100; // code: not in the image (file backed)
        image.execution.regs.rsp = 0x7ffd_0001_f010;
        image.execution.regs.fs_base = 0x5555_5555_7040;
        image.execution.regs.rbx = 0x5555_5556_1008; // heap, second page
        image.execution.regs.rcx = 42; // not an address
        let hot = hot_pages(&image, &map);
        let addrs: Vec<u64> = hot.iter().filter_map(|&o| map.addr_at(o)).collect();
        assert_eq!(
            addrs,
            vec![
                0x5555_5555_7000,
                0x5555_5556_1000,
                0x7ffd_0001_f000,
                0x7ffd_0002_0000
            ]
        );
    }
}
