//! Bulk page copy out of a (frozen) process into a [`PageSink`], as a two-stage pipeline.
//!
//! A reader thread fills buffers with `process_vm_readv` (or `/proc/PID/mem` for pages
//! without read permission) while the calling thread hashes and writes the previous buffer.
//! Buffers are small enough (1 MiB) to stay in cache between the read and the write, so page
//! data crosses memory once on the way in and once on the way out.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use ferry_sys::mem::{self, ProcMem};
use ferry_sys::{Pid, SysError};

use crate::CheckpointError;

/// Bytes per pipeline buffer.
pub const CHUNK: usize = 1 << 20;
const BUFFERS: usize = 4;

/// Where page data goes, in index order.
pub trait PageSink {
    fn write_pages(&mut self, data: &[u8]) -> Result<(), CheckpointError>;
}

/// A run of pages to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u64,
    /// Whether `process_vm_readv` may read it (else `/proc/PID/mem` is used).
    pub readable: bool,
}

/// One buffer's worth of work: remote ranges that fill it, back to back.
fn plan(segments: &[Segment]) -> Vec<(Vec<(u64, usize)>, bool)> {
    let mut out = Vec::new();
    let mut batch: Vec<(u64, usize)> = Vec::new();
    let mut fill = 0usize;
    for s in segments {
        let mut at = s.addr;
        let end = s.addr + s.len;
        while at < end {
            if !s.readable {
                if !batch.is_empty() {
                    out.push((std::mem::take(&mut batch), true));
                    fill = 0;
                }
                let take = ((end - at) as usize).min(CHUNK);
                out.push((vec![(at, take)], false));
                at += take as u64;
                continue;
            }
            let take = ((end - at) as usize).min(CHUNK - fill);
            batch.push((at, take));
            fill += take;
            at += take as u64;
            if fill == CHUNK || batch.len() == mem::IOV_MAX {
                out.push((std::mem::take(&mut batch), true));
                fill = 0;
            }
        }
    }
    if !batch.is_empty() {
        out.push((batch, true));
    }
    out
}

/// Copies `segments` of `pid` into `sink`; returns the time spent.
pub fn copy_to_sink(
    pid: Pid,
    segments: &[Segment],
    sink: &mut dyn PageSink,
) -> Result<Duration, CheckpointError> {
    let started = Instant::now();
    let work = plan(segments);
    if work.is_empty() {
        return Ok(started.elapsed());
    }
    let memfile = if segments.iter().any(|s| !s.readable) {
        Some(ProcMem::open(pid).map_err(CheckpointError::sys("opening process memory"))?)
    } else {
        None
    };
    let (full_tx, full_rx): (SyncSender<Result<Vec<u8>, SysError>>, Receiver<_>) =
        sync_channel(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = empty_tx.send(Vec::with_capacity(CHUNK));
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for (ranges, readable) in work {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let len: usize = ranges.iter().map(|r| r.1).sum();
                buf.resize(len, 0);
                let got = if readable {
                    mem::read(pid, &ranges, &mut buf)
                } else {
                    match &memfile {
                        Some(f) => f.read_at(ranges[0].0, &mut buf),
                        None => Ok(()),
                    }
                };
                let stop = got.is_err();
                if full_tx.send(got.map(|_| buf)).is_err() || stop {
                    return;
                }
            }
        });
        // Owns the consumer's channel ends: when it stops early (an error), dropping them
        // ends the reader too, and the scope can join it.
        let mut consume = move || -> Result<(), CheckpointError> {
            for msg in full_rx.iter() {
                let buf = msg.map_err(CheckpointError::sys("reading process memory"))?;
                sink.write_pages(&buf)?;
                let _ = empty_tx.send(buf);
            }
            Ok(())
        };
        consume()
    })?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_fill_buffers_and_isolate_unreadable_runs() {
        let seg = |addr, len, readable| Segment {
            addr,
            len,
            readable,
        };
        let p = plan(&[
            seg(0x1000, 0x1000, true),
            seg(0x10000, CHUNK as u64, true),
            seg(0x900000, 0x2000, false),
            seg(0xa00000, 0x1000, true),
        ]);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].0, vec![(0x1000, 0x1000), (0x10000, CHUNK - 0x1000)]);
        assert_eq!(p[1].0, vec![(0x10000 + (CHUNK - 0x1000) as u64, 0x1000)]);
        assert_eq!(p[2], (vec![(0x900000, 0x2000)], false));
        assert_eq!(p[3], (vec![(0xa00000, 0x1000)], true));
        let total: usize = p.iter().flat_map(|b| b.0.iter()).map(|r| r.1).sum();
        assert_eq!(total, 0x1000 + CHUNK + 0x2000 + 0x1000);
    }

    struct Collect(Vec<u8>);
    impl PageSink for Collect {
        fn write_pages(&mut self, data: &[u8]) -> Result<(), CheckpointError> {
            self.0.extend_from_slice(data);
            Ok(())
        }
    }

    struct Full(usize);
    impl PageSink for Full {
        fn write_pages(&mut self, _: &[u8]) -> Result<(), CheckpointError> {
            self.0 += 1;
            if self.0 == 2 {
                return Err(CheckpointError::ImageDir {
                    path: "/full".into(),
                    detail: "No space left on device".into(),
                });
            }
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_stops_the_pipeline() {
        let data = vec![1u8; 8 * CHUNK];
        let segs = [Segment {
            addr: data.as_ptr() as u64,
            len: data.len() as u64,
            readable: true,
        }];
        let err = copy_to_sink(ferry_sys::host::self_pid(), &segs, &mut Full(0)).unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
    }

    #[test]
    fn copies_own_memory_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK + 12288)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let base = data.as_ptr() as u64;
        let segs = [
            Segment {
                addr: base,
                len: 4096,
                readable: true,
            },
            Segment {
                addr: base + 8192,
                len: 3 * CHUNK as u64,
                readable: true,
            },
        ];
        let mut sink = Collect(Vec::new());
        copy_to_sink(ferry_sys::host::self_pid(), &segs, &mut sink).unwrap();
        assert_eq!(&sink.0[..4096], &data[..4096]);
        assert_eq!(&sink.0[4096..], &data[8192..8192 + 3 * CHUNK]);
    }
}
