//! The frame header: its layout, its kinds and the checks every received header passes.
//!
//! Pure data and byte layout, no I/O: [`crate::conn`] moves headers and payloads. Every frame
//! is a 24-byte little-endian header, then `len` payload bytes:
//!
//! ```text
//!  0        3    4        6        8            12           16                       24
//!  +--------+----+--------+--------+------------+------------+------------------------+
//!  | "FRY"  |ver | kind   | flags  | len (u32)  | tag (u32)  | addr (u64)             |
//!  +--------+----+--------+--------+------------+------------+------------------------+
//! ```
//!
//! A header is checked completely before its payload is touched: magic, version, kind (0 is
//! invalid), flags (none defined: must be 0), the length limit of the kind (checked before
//! anything is allocated), and `tag`/`addr` zero for kinds that do not use them.

use std::fmt;

use crate::WIRE_VERSION;
use crate::error::WireError;

/// Size of a frame header.
pub const HEADER_LEN: usize = 24;

/// First bytes of every frame header.
pub const FRAME_MAGIC: [u8; 3] = *b"FRY";

/// Largest payload of a control frame (a serialized message): 64 MiB.
pub const MAX_CONTROL_PAYLOAD: usize = 64 << 20;

/// Largest payload of a page frame: 16 MiB.
pub const MAX_PAGES_PAYLOAD: usize = 16 << 20;

/// What a frame carries. Values on the wire are u16; 0 is never valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameKind {
    /// A control message: postcard-encoded serde value.
    Control = 1,
    /// Raw page bytes with an address and a tag.
    Pages = 2,
    /// The sender ends the stream; no payload.
    Close = 3,
}

impl FrameKind {
    /// The kind for a wire value, `None` for 0 and unknown values.
    pub fn from_u16(v: u16) -> Option<FrameKind> {
        match v {
            1 => Some(FrameKind::Control),
            2 => Some(FrameKind::Pages),
            3 => Some(FrameKind::Close),
            _ => None,
        }
    }

    /// The payload limit of this kind.
    pub fn max_payload(self) -> usize {
        match self {
            FrameKind::Control => MAX_CONTROL_PAYLOAD,
            FrameKind::Pages => MAX_PAGES_PAYLOAD,
            FrameKind::Close => 0,
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameKind::Control => "control",
            FrameKind::Pages => "page",
            FrameKind::Close => "close",
        })
    }
}

/// The caller-defined fields of a page frame, and its payload length.
///
/// ferry-wire gives `addr` and `tag` no meaning: the migration protocol uses `addr` for the
/// virtual address of the first page and `tag` to tell the bulk stream from fault replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageFrameHeader {
    /// Caller-defined, typically the address of the first byte.
    pub addr: u64,
    /// Payload length in bytes (at most [`MAX_PAGES_PAYLOAD`]).
    pub len: u32,
    /// Caller-defined.
    pub tag: u32,
}

/// A decoded, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub kind: FrameKind,
    pub len: u32,
    pub tag: u32,
    pub addr: u64,
}

impl FrameHeader {
    pub fn control(len: usize) -> Result<FrameHeader, WireError> {
        Ok(FrameHeader {
            kind: FrameKind::Control,
            len: checked_len(FrameKind::Control, len)?,
            tag: 0,
            addr: 0,
        })
    }

    pub fn pages(addr: u64, tag: u32, len: usize) -> Result<FrameHeader, WireError> {
        Ok(FrameHeader {
            kind: FrameKind::Pages,
            len: checked_len(FrameKind::Pages, len)?,
            tag,
            addr,
        })
    }

    pub fn close() -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Close,
            len: 0,
            tag: 0,
            addr: 0,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..3].copy_from_slice(&FRAME_MAGIC);
        b[3] = WIRE_VERSION;
        b[4..6].copy_from_slice(&(self.kind as u16).to_le_bytes());
        // 6..8: flags, none defined.
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.tag.to_le_bytes());
        b[16..24].copy_from_slice(&self.addr.to_le_bytes());
        b
    }

    /// Decodes and validates a received header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<FrameHeader, WireError> {
        let bad = |reason: String| Err(WireError::BadFrame { reason });
        if b[0..3] != FRAME_MAGIC {
            return bad(format!("bad magic {:02x?}", &b[0..3]));
        }
        if b[3] != WIRE_VERSION {
            return bad(format!("version {} (expected {WIRE_VERSION})", b[3]));
        }
        let raw_kind = u16::from_le_bytes([b[4], b[5]]);
        let Some(kind) = FrameKind::from_u16(raw_kind) else {
            return bad(format!("unknown frame kind {raw_kind}"));
        };
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags != 0 {
            return bad(format!("unknown flags {flags:#06x} on a {kind} frame"));
        }
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let tag = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        let addr = u64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]);
        if len as usize > kind.max_payload() {
            return Err(WireError::TooLarge {
                kind,
                len: len.into(),
                max: kind.max_payload(),
            });
        }
        if kind != FrameKind::Pages && (tag != 0 || addr != 0) {
            return bad(format!(
                "{kind} frame with tag {tag} and addr {addr:#x} (must be 0)"
            ));
        }
        Ok(FrameHeader {
            kind,
            len,
            tag,
            addr,
        })
    }

    pub fn page_header(&self) -> PageFrameHeader {
        PageFrameHeader {
            addr: self.addr,
            len: self.len,
            tag: self.tag,
        }
    }
}

fn checked_len(kind: FrameKind, len: usize) -> Result<u32, WireError> {
    if len > kind.max_payload() {
        return Err(WireError::TooLarge {
            kind,
            len: len as u64,
            max: kind.max_payload(),
        });
    }
    // The limits are below u32::MAX.
    u32::try_from(len).map_err(|_| WireError::TooLarge {
        kind,
        len: len as u64,
        max: kind.max_payload(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_fixed_little_endian() {
        let h = FrameHeader::pages(0x7fff_0000_1000, 0x0102_0304, 8192).unwrap();
        let b = h.encode();
        assert_eq!(
            b,
            [
                b'F', b'R', b'Y', 1, 2, 0, 0, 0, 0x00, 0x20, 0, 0, 4, 3, 2, 1, 0x00, 0x10, 0, 0,
                0xff, 0x7f, 0, 0
            ]
        );
        assert_eq!(FrameHeader::decode(&b).unwrap(), h);
        assert_eq!(
            FrameHeader::decode(&FrameHeader::close().encode()).unwrap(),
            FrameHeader::close()
        );
        let c = FrameHeader::control(5).unwrap();
        assert_eq!(FrameHeader::decode(&c.encode()).unwrap(), c);
    }

    fn decode_err(b: [u8; HEADER_LEN]) -> String {
        FrameHeader::decode(&b).unwrap_err().to_string()
    }

    #[test]
    fn invalid_headers_are_named() {
        let good = FrameHeader::control(10).unwrap().encode();

        let mut b = good;
        b[0] = b'X';
        assert_eq!(
            decode_err(b),
            "invalid frame header: bad magic [58, 52, 59]"
        );

        let mut b = good;
        b[3] = 9;
        assert_eq!(
            decode_err(b),
            "invalid frame header: version 9 (expected 1)"
        );

        let mut b = good;
        b[4] = 0;
        assert_eq!(decode_err(b), "invalid frame header: unknown frame kind 0");
        b[4] = 77;
        assert_eq!(decode_err(b), "invalid frame header: unknown frame kind 77");

        let mut b = good;
        b[6] = 1;
        assert_eq!(
            decode_err(b),
            "invalid frame header: unknown flags 0x0001 on a control frame"
        );

        let mut b = good;
        b[12] = 1;
        assert_eq!(
            decode_err(b),
            "invalid frame header: control frame with tag 1 and addr 0x0 (must be 0)"
        );

        let mut b = FrameHeader::close().encode();
        b[8] = 1;
        assert_eq!(
            decode_err(b),
            "close frame of 1 bytes exceeds the limit of 0 bytes"
        );
    }

    #[test]
    fn limits_are_checked_both_ways() {
        assert!(FrameHeader::control(MAX_CONTROL_PAYLOAD).is_ok());
        assert!(FrameHeader::pages(0, 0, MAX_PAGES_PAYLOAD).is_ok());
        assert_eq!(
            FrameHeader::pages(0, 0, MAX_PAGES_PAYLOAD + 1)
                .unwrap_err()
                .to_string(),
            "page frame of 16777217 bytes exceeds the limit of 16777216 bytes"
        );
        assert_eq!(
            FrameHeader::control(MAX_CONTROL_PAYLOAD + 1)
                .unwrap_err()
                .to_string(),
            "control frame of 67108865 bytes exceeds the limit of 67108864 bytes"
        );

        // Received: a header that claims more is refused before anything is read or allocated.
        let mut b = FrameHeader::pages(0, 0, 0).unwrap().encode();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(WireError::TooLarge {
                kind: FrameKind::Pages,
                len: 4294967295,
                max: MAX_PAGES_PAYLOAD
            })
        ));
        let mut b = FrameHeader::control(0).unwrap().encode();
        b[8..12].copy_from_slice(&((MAX_CONTROL_PAYLOAD as u32) + 1).to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(WireError::TooLarge {
                kind: FrameKind::Control,
                ..
            })
        ));
    }
}
