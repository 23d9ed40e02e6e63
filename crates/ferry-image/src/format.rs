//! The on-disk container of an image: magic, version, length, payload, checksum.
//!
//! Compatibility rule: an image is readable when its major version equals ours and its minor
//! version is not newer than ours. The checksum is verified before the payload is parsed, and
//! every length is checked against the bytes actually present, so that a truncated, corrupted
//! or hand-crafted file is rejected with a precise error and never half-parsed.

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::model::{FdKind, PAGE_SIZE, ProcessImage, SocketKind};
use crate::tree::TreeImage;

/// Magic of `core.img`.
pub const CORE_MAGIC: [u8; 8] = *b"FERRYIMG";
/// Magic of `tree.img`.
pub const TREE_MAGIC: [u8; 8] = *b"FERRYTRE";
/// Magic of `pages.img`.
pub const PAGES_MAGIC: [u8; 8] = *b"FERRYPGS";
/// Version of the image format. Bump minor for additions old readers may ignore, major for
/// anything else.
pub const FORMAT_MAJOR: u16 = 1;
pub const FORMAT_MINOR: u16 = 6;
/// The first minor version whose images list threads ([`ProcessImage::threads`]).
const FIRST_MINOR_WITH_THREADS: u16 = 2;
/// The first minor version whose socket pairs are [`FdKind::UnixPair`]s.
const FIRST_MINOR_WITH_UNIX_PAIRS: u16 = 3;
/// The first minor version whose images end with [`ProcessImage::pid_namespace`].
const FIRST_MINOR_WITH_PID_NAMESPACE: u16 = 5;
/// The first minor version whose images end with [`ProcessImage::ipc_namespace`].
const FIRST_MINOR_WITH_IPC_NAMESPACE: u16 = 6;
/// Size of the `pages.img` header; page data starts page-aligned right after it.
pub const PAGES_HEADER_LEN: u64 = PAGE_SIZE;
/// Largest `core.img` payload ferry accepts (the model of a process with the maximum number of
/// mappings and files is far below this).
pub const MAX_CORE_PAYLOAD: u64 = 64 << 20;

const CORE_HEADER_LEN: usize = 24;
const CHECKSUM_LEN: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("{file}: not a ferry image (bad magic)")]
    BadMagic { file: &'static str },
    #[error(
        "{file}: image format {major}.{minor} is not supported (this ferry reads {}.0 to {}.{})",
        FORMAT_MAJOR,
        FORMAT_MAJOR,
        FORMAT_MINOR
    )]
    UnsupportedVersion {
        file: &'static str,
        major: u16,
        minor: u16,
    },
    #[error("{file}: truncated: {expected} bytes expected, {actual} present")]
    Truncated {
        file: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error("{file}: {actual} bytes, but its header says {expected}")]
    LengthMismatch {
        file: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error("{file}: payload of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        file: &'static str,
        len: u64,
        limit: u64,
    },
    #[error(
        "{file}: checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the image is corrupted"
    )]
    Checksum {
        file: &'static str,
        stored: u64,
        computed: u64,
    },
    #[error("{file}: unknown flags {flags:#x}")]
    UnknownFlags { file: &'static str, flags: u32 },
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error("core.img: cannot encode the process state: {0}")]
    Encode(String),
    #[error("pages.img belongs to image {found:#018x}, core.img to {expected:#018x}")]
    ImageIdMismatch { expected: u64, found: u64 },
}

fn check_version(file: &'static str, major: u16, minor: u16) -> Result<(), FormatError> {
    if major != FORMAT_MAJOR || minor > FORMAT_MINOR {
        return Err(FormatError::UnsupportedVersion { file, major, minor });
    }
    Ok(())
}

/// Encodes a process image as the bytes of `core.img`.
pub fn encode_core(image: &ProcessImage) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_stdvec(image).map_err(|e| FormatError::Encode(e.to_string()))?;
    Ok(wrap_payload(&payload))
}

/// Frames an already encoded payload as `core.img` (header and checksum). Used by the fuzz
/// target that reaches the payload decoder with arbitrary bytes.
pub fn wrap_payload(payload: &[u8]) -> Vec<u8> {
    frame(CORE_MAGIC, payload)
}

fn frame(magic: [u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CORE_HEADER_LEN + payload.len() + CHECKSUM_LEN);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The postcard payload of an image (what [`wrap_payload`] frames).
pub fn encode_payload(image: &ProcessImage) -> Result<Vec<u8>, FormatError> {
    postcard::to_stdvec(image).map_err(|e| FormatError::Encode(e.to_string()))
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes `core.img`: header, checksum, then payload. Does not validate the model; call
/// [`crate::validate`] on the result.
pub fn decode_core(bytes: &[u8]) -> Result<ProcessImage, FormatError> {
    let (minor, payload) = unframe("core.img", CORE_MAGIC, bytes)?;
    let mut payload = std::borrow::Cow::Borrowed(payload);
    if minor < FIRST_MINOR_WITH_THREADS {
        // `threads` was the last field of the image: an older payload is a newer one that
        // lacks it, and postcard encodes an empty list as one zero byte.
        payload.to_mut().push(0);
    }
    if minor < FIRST_MINOR_WITH_PID_NAMESPACE {
        // Likewise `pid_namespace`, the last field since: `None` is one zero byte.
        payload.to_mut().push(0);
    }
    if minor < FIRST_MINOR_WITH_IPC_NAMESPACE {
        // And `ipc_namespace`, the last field since.
        payload.to_mut().push(0);
    }
    let (mut image, rest) = postcard::take_from_bytes::<ProcessImage>(&payload)
        .map_err(|e| FormatError::Decode(format!("core.img: the process state: {e}")))?;
    if !rest.is_empty() {
        return Err(FormatError::Decode(format!(
            "core.img: {} trailing bytes after the process state",
            rest.len()
        )));
    }
    if minor < FIRST_MINOR_WITH_UNIX_PAIRS {
        upgrade_unix_streams(&mut image);
    }
    Ok(image)
}

/// Checks a framed file (magic, version, flags, length, checksum) and returns its minor
/// version and payload.
fn unframe<'a>(
    file: &'static str,
    magic: [u8; 8],
    bytes: &'a [u8],
) -> Result<(u16, &'a [u8]), FormatError> {
    let actual = bytes.len() as u64;
    if bytes.len() < CORE_HEADER_LEN + CHECKSUM_LEN {
        if bytes.len() >= 8 && bytes[..8] != magic {
            return Err(FormatError::BadMagic { file });
        }
        return Err(FormatError::Truncated {
            file,
            expected: (CORE_HEADER_LEN + CHECKSUM_LEN) as u64,
            actual,
        });
    }
    if bytes[..8] != magic {
        return Err(FormatError::BadMagic { file });
    }
    let minor = le_u16(bytes, 10);
    check_version(file, le_u16(bytes, 8), minor)?;
    let flags = le_u32(bytes, 12);
    if flags != 0 {
        return Err(FormatError::UnknownFlags { file, flags });
    }
    let len = le_u64(bytes, 16);
    if len > MAX_CORE_PAYLOAD {
        return Err(FormatError::TooLarge {
            file,
            len,
            limit: MAX_CORE_PAYLOAD,
        });
    }
    let expected = CORE_HEADER_LEN as u64 + len + CHECKSUM_LEN as u64;
    if actual < expected {
        return Err(FormatError::Truncated {
            file,
            expected,
            actual,
        });
    }
    if actual > expected {
        return Err(FormatError::LengthMismatch {
            file,
            expected,
            actual,
        });
    }
    let body_end = CORE_HEADER_LEN + len as usize;
    let stored = le_u64(bytes, body_end);
    let computed = xxh3_64(&bytes[..body_end]);
    if stored != computed {
        return Err(FormatError::Checksum {
            file,
            stored,
            computed,
        });
    }
    Ok((minor, &bytes[CORE_HEADER_LEN..body_end]))
}

/// Encodes a process tree's manifest as the bytes of `tree.img` (framed as `core.img` is,
/// with its own magic).
pub fn encode_tree(tree: &TreeImage) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_stdvec(tree).map_err(|e| FormatError::Encode(e.to_string()))?;
    Ok(frame(TREE_MAGIC, &payload))
}

/// Decodes `tree.img`. Does not validate the tree; call [`crate::tree::validate_tree`].
pub fn decode_tree(bytes: &[u8]) -> Result<TreeImage, FormatError> {
    let (_, payload) = unframe("tree.img", TREE_MAGIC, bytes)?;
    let (tree, rest) = postcard::take_from_bytes::<TreeImage>(payload)
        .map_err(|e| FormatError::Decode(format!("tree.img: {e}")))?;
    if !rest.is_empty() {
        return Err(FormatError::Decode(format!(
            "tree.img: {} trailing bytes after the tree",
            rest.len()
        )));
    }
    Ok(tree)
}

/// Turns the stream socket pairs of a 1.1/1.2 image into [`FdKind::UnixPair`]s, the one form
/// the rest of ferry knows.
fn upgrade_unix_streams(image: &mut ProcessImage) {
    for fd in &mut image.files.fds {
        if let FdKind::UnixStream {
            socket,
            peer,
            flags,
            data,
        } = &mut fd.kind
        {
            let messages = if data.is_empty() {
                Vec::new()
            } else {
                vec![std::mem::take(data)]
            };
            fd.kind = FdKind::UnixPair {
                socket: *socket,
                peer: *peer,
                kind: SocketKind::Stream,
                flags: *flags,
                pass_credentials: false,
                send_buffer: 0,
                messages,
            };
        }
    }
}

/// The header of `pages.img`. The page data follows at [`PAGES_HEADER_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagesHeader {
    pub image_id: u64,
    pub data_len: u64,
    pub data_hash: u64,
}

impl PagesHeader {
    pub fn encode(&self) -> [u8; PAGES_HEADER_LEN as usize] {
        let mut out = [0u8; PAGES_HEADER_LEN as usize];
        out[..8].copy_from_slice(&PAGES_MAGIC);
        out[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
        out[10..12].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
        out[16..24].copy_from_slice(&self.image_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        out[32..40].copy_from_slice(&self.data_hash.to_le_bytes());
        let sum = xxh3_64(&out[..40]);
        out[40..48].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes and checks the header of a `pages.img` of `file_len` bytes.
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<PagesHeader, FormatError> {
        const FILE: &str = "pages.img";
        if bytes.len() < 48 || file_len < PAGES_HEADER_LEN {
            return Err(FormatError::Truncated {
                file: FILE,
                expected: PAGES_HEADER_LEN,
                actual: file_len.min(bytes.len() as u64),
            });
        }
        if bytes[..8] != PAGES_MAGIC {
            return Err(FormatError::BadMagic { file: FILE });
        }
        check_version(FILE, le_u16(bytes, 8), le_u16(bytes, 10))?;
        let stored = le_u64(bytes, 40);
        let computed = xxh3_64(&bytes[..40]);
        if stored != computed {
            return Err(FormatError::Checksum {
                file: FILE,
                stored,
                computed,
            });
        }
        let header = PagesHeader {
            image_id: le_u64(bytes, 16),
            data_len: le_u64(bytes, 24),
            data_hash: le_u64(bytes, 32),
        };
        let expected = PAGES_HEADER_LEN.saturating_add(header.data_len);
        if file_len < expected {
            return Err(FormatError::Truncated {
                file: FILE,
                expected,
                actual: file_len,
            });
        }
        if file_len > expected {
            return Err(FormatError::LengthMismatch {
                file: FILE,
                expected,
                actual: file_len,
            });
        }
        Ok(header)
    }
}

/// Page data is hashed in blocks of this size; the recorded hash is the xxh3-64 of the block
/// hashes (little-endian, in order). Blocks can be verified in parallel.
pub const HASH_BLOCK: usize = 16 << 20;

/// Streaming hasher for page data (see [`HASH_BLOCK`]).
#[derive(Default)]
pub struct PageHasher {
    block: xxhash_rust::xxh3::Xxh3,
    in_block: usize,
    blocks: Vec<u8>,
}

impl PageHasher {
    pub fn new() -> PageHasher {
        PageHasher::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (HASH_BLOCK - self.in_block).min(data.len());
            self.block.update(&data[..take]);
            self.in_block += take;
            data = &data[take..];
            if self.in_block == HASH_BLOCK {
                self.blocks
                    .extend_from_slice(&self.block.digest().to_le_bytes());
                self.block.reset();
                self.in_block = 0;
            }
        }
    }

    pub fn digest(mut self) -> u64 {
        if self.in_block > 0 {
            self.blocks
                .extend_from_slice(&self.block.digest().to_le_bytes());
        }
        xxh3_64(&self.blocks)
    }
}

/// The page-data hash of `data`, computed on `threads` threads.
pub fn page_hash(data: &[u8], threads: usize) -> u64 {
    let blocks: Vec<&[u8]> = data.chunks(HASH_BLOCK).collect();
    let threads = threads.clamp(1, blocks.len().max(1));
    let mut sums = vec![0u64; blocks.len()];
    std::thread::scope(|scope| {
        for (t, out) in sums
            .chunks_mut(blocks.len().div_ceil(threads).max(1))
            .enumerate()
        {
            let first = t * blocks.len().div_ceil(threads).max(1);
            let blocks = &blocks;
            scope.spawn(move || {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = xxh3_64(blocks[first + i]);
                }
            });
        }
    });
    let bytes: Vec<u8> = sums.iter().flat_map(|h| h.to_le_bytes()).collect();
    xxh3_64(&bytes)
}

/// Checks page data against the hash recorded for it.
pub fn verify_pages(data: &[u8], expected_hash: u64) -> Result<(), FormatError> {
    let computed = page_hash(data, 2);
    if computed != expected_hash {
        return Err(FormatError::Checksum {
            file: "pages.img",
            stored: expected_hash,
            computed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests_support::sample_image;

    #[test]
    fn core_round_trip() {
        let image = sample_image();
        let bytes = encode_core(&image).unwrap();
        assert_eq!(decode_core(&bytes).unwrap(), image);
    }

    #[test]
    fn core_round_trip_with_a_link() {
        let mut image = sample_image();
        let link = crate::model::FdKind::Link {
            socket: "ferry-msg".into(),
            hello: b"\x01hello\x00world".to_vec(),
        };
        for (number, dup_of) in [(4, None), (9, Some(4))] {
            image.files.fds.push(crate::model::Fd {
                number,
                cloexec: dup_of.is_none(),
                kind: link.clone(),
                dup_of,
            });
        }
        crate::validate(&image).unwrap();
        let bytes = encode_core(&image).unwrap();
        let back = decode_core(&bytes).unwrap();
        assert_eq!(back, image);
        assert_eq!(back.files.fds[3].kind, link);
    }

    /// Images written before links and kernel objects existed decode unchanged: the variants
    /// that were there keep their postcard tags, new ones come last.
    #[test]
    fn fd_kind_tags_are_stable() {
        use crate::model::{FdKind, FileIdentity};
        let tag = |k: &FdKind| postcard::to_allocvec(k).unwrap()[0];
        let path = String::from("/x");
        assert_eq!(
            tag(&FdKind::Regular {
                path: path.clone(),
                flags: 0,
                pos: 0,
                identity: FileIdentity::default()
            }),
            0
        );
        assert_eq!(
            tag(&FdKind::Directory {
                path: path.clone(),
                flags: 0,
                pos: 0
            }),
            1
        );
        assert_eq!(
            tag(&FdKind::CharDevice {
                path,
                flags: 0,
                major: 1,
                minor: 3
            }),
            2
        );
        assert_eq!(
            tag(&FdKind::Link {
                socket: "m".into(),
                hello: Vec::new()
            }),
            3
        );
        assert_eq!(
            tag(&FdKind::Pipe {
                pipe: 1,
                write: false,
                flags: 0,
                capacity: 4096,
                data: Vec::new()
            }),
            4
        );
        assert_eq!(
            tag(&FdKind::Epoll {
                flags: 0,
                watches: Vec::new()
            }),
            8
        );
        assert_eq!(
            tag(&FdKind::MemFd {
                name: String::new(),
                flags: 0,
                pos: 0,
                seals: 0,
                data: Vec::new()
            }),
            9
        );
        assert_eq!(
            tag(&FdKind::DeletedFile {
                path: String::new(),
                flags: 0,
                pos: 0,
                mode: 0,
                data: Vec::new()
            }),
            10
        );
        assert_eq!(
            tag(&FdKind::UnixStream {
                socket: 1,
                peer: 2,
                flags: 0,
                data: Vec::new()
            }),
            11
        );
        assert_eq!(
            tag(&FdKind::UnixPair {
                socket: 1,
                peer: 2,
                kind: crate::model::SocketKind::Datagram,
                flags: 0,
                pass_credentials: false,
                send_buffer: 212992,
                messages: Vec::new()
            }),
            12
        );
        assert_eq!(
            tag(&FdKind::Fifo {
                path: String::new(),
                flags: 0,
                capacity: 4096,
                data: Vec::new()
            }),
            13
        );
        assert_eq!(
            tag(&FdKind::ProcFile {
                path: String::new(),
                directory: false,
                flags: 0,
                pos: 0
            }),
            14
        );
        assert_eq!(
            tag(&FdKind::Inotify {
                flags: 0,
                watches: Vec::new()
            }),
            15
        );
        assert_eq!(
            tag(&FdKind::UnixListener {
                socket: 1,
                kind: crate::model::SocketKind::Stream,
                name: crate::model::SocketName::Abstract(Vec::new()),
                backlog: 0,
                flags: 0,
                pass_credentials: false,
            }),
            16
        );
    }

    #[test]
    fn stream_pairs_of_1_2_images_load_as_unix_pairs() {
        use crate::model::{Fd, FdKind, SocketKind};
        let mut image = sample_image();
        let end = |number, socket, peer, data: &[u8]| Fd {
            number,
            cloexec: false,
            dup_of: None,
            kind: FdKind::UnixStream {
                socket,
                peer,
                flags: 2,
                data: data.to_vec(),
            },
        };
        image.files.fds.push(end(5, 10, 11, b"queued"));
        image.files.fds.push(end(6, 11, 10, b""));
        // A 1.2 payload has no `pid_namespace` and `ipc_namespace` at its end.
        let mut payload = encode_payload(&image).unwrap();
        assert_eq!(payload.pop(), Some(0));
        assert_eq!(payload.pop(), Some(0));
        let mut bytes = wrap_payload(&payload);
        bytes[10..12].copy_from_slice(&2u16.to_le_bytes());
        let body = bytes.len() - 8;
        let sum = xxh3_64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
        let back = decode_core(&bytes).unwrap();
        let n = back.files.fds.len();
        assert_eq!(
            back.files.fds[n - 2].kind,
            FdKind::UnixPair {
                socket: 10,
                peer: 11,
                kind: SocketKind::Stream,
                flags: 2,
                pass_credentials: false,
                send_buffer: 0,
                messages: vec![b"queued".to_vec()],
            }
        );
        assert!(matches!(
            &back.files.fds[n - 1].kind,
            FdKind::UnixPair { messages, .. } if messages.is_empty()
        ));
        crate::validate(&back).unwrap();
    }

    #[test]
    fn core_rejects_bad_magic() {
        let mut bytes = encode_core(&sample_image()).unwrap();
        bytes[0] = b'X';
        let err = decode_core(&bytes).unwrap_err();
        assert_eq!(err.to_string(), "core.img: not a ferry image (bad magic)");
    }

    #[test]
    fn core_rejects_newer_versions() {
        let mut bytes = encode_core(&sample_image()).unwrap();
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        let err = decode_core(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "core.img: image format 2.6 is not supported (this ferry reads 1.0 to 1.6)"
        );
        let mut bytes = encode_core(&sample_image()).unwrap();
        bytes[10..12].copy_from_slice(&(FORMAT_MINOR + 1).to_le_bytes());
        assert!(matches!(
            decode_core(&bytes),
            Err(FormatError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn images_from_before_threads_decode_with_no_threads() {
        let image = sample_image();
        let mut payload = encode_payload(&image).unwrap();
        // A 1.1 payload is a 1.6 payload without the trailing empty thread list and the
        // trailing `None`s (no PID namespace, no IPC namespace).
        assert_eq!(payload.pop(), Some(0));
        assert_eq!(payload.pop(), Some(0));
        assert_eq!(payload.pop(), Some(0));
        let mut bytes = wrap_payload(&payload);
        bytes[10..12].copy_from_slice(&1u16.to_le_bytes());
        let body = bytes.len() - 8;
        let sum = xxh3_64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(decode_core(&bytes).unwrap(), image);
        // The same bytes claiming 1.2 lack a field.
        bytes[10..12].copy_from_slice(&2u16.to_le_bytes());
        let sum = xxh3_64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(decode_core(&bytes), Err(FormatError::Decode(_))));
    }

    #[test]
    fn images_from_before_pid_namespaces_decode_with_none() {
        let image = sample_image();
        let mut payload = encode_payload(&image).unwrap();
        assert_eq!(payload.pop(), Some(0));
        assert_eq!(payload.pop(), Some(0));
        let mut bytes = wrap_payload(&payload);
        bytes[10..12].copy_from_slice(&4u16.to_le_bytes());
        let body = bytes.len() - 8;
        let sum = xxh3_64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(decode_core(&bytes).unwrap(), image);
        // And a 1.5 image in its own namespace keeps it.
        let mut image = sample_image();
        image.pid_namespace = Some(crate::model::PidNamespace { host_pid: 4242 });
        let back = decode_core(&encode_core(&image).unwrap()).unwrap();
        assert_eq!(back.pid_namespace, image.pid_namespace);
    }

    #[test]
    fn images_from_before_ipc_namespaces_decode_with_none() {
        let mut image = sample_image();
        image.pid_namespace = Some(crate::model::PidNamespace { host_pid: 4242 });
        let mut payload = encode_payload(&image).unwrap();
        assert_eq!(payload.pop(), Some(0));
        let mut bytes = wrap_payload(&payload);
        bytes[10..12].copy_from_slice(&5u16.to_le_bytes());
        let body = bytes.len() - 8;
        let sum = xxh3_64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(decode_core(&bytes).unwrap(), image);
        // A 1.6 image keeps its segments.
        image.ipc_namespace = Some(crate::model::IpcNamespace {
            segments: vec![crate::model::SysvSegment {
                id: 32769,
                key: 0x1234,
                size: 10_000,
                mode: 0o600,
                uid: 1000,
                gid: 1000,
                removed: false,
                runs: vec![crate::model::SegmentRun {
                    offset: 4096,
                    bytes: vec![7; 4096],
                }],
            }],
        });
        let back = decode_core(&encode_core(&image).unwrap()).unwrap();
        assert_eq!(back, image);
    }

    #[test]
    fn core_rejects_every_truncation() {
        let bytes = encode_core(&sample_image()).unwrap();
        for cut in 0..bytes.len() {
            let err = decode_core(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, FormatError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn core_rejects_every_single_bit_flip() {
        let bytes = encode_core(&sample_image()).unwrap();
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(decode_core(&b).is_err(), "flip at {at} accepted");
        }
    }

    #[test]
    fn core_rejects_checksum_mismatch_with_clear_text() {
        let mut bytes = encode_core(&sample_image()).unwrap();
        let n = bytes.len();
        bytes[n - 20] ^= 1;
        let err = decode_core(&bytes).unwrap_err();
        assert!(err.to_string().starts_with("core.img: checksum mismatch"));
        assert!(err.to_string().ends_with("the image is corrupted"));
    }

    #[test]
    fn core_rejects_huge_length_without_allocating() {
        let mut bytes = encode_core(&sample_image()).unwrap();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode_core(&bytes),
            Err(FormatError::TooLarge { .. })
        ));
    }

    #[test]
    fn core_rejects_trailing_garbage() {
        let mut bytes = encode_core(&sample_image()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode_core(&bytes),
            Err(FormatError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn pages_header_round_trip_and_checks() {
        let h = PagesHeader {
            image_id: 7,
            data_len: 8192,
            data_hash: 99,
        };
        let enc = h.encode();
        assert_eq!(
            PagesHeader::decode(&enc, PAGES_HEADER_LEN + 8192).unwrap(),
            h
        );
        assert!(matches!(
            PagesHeader::decode(&enc, PAGES_HEADER_LEN + 4096),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            PagesHeader::decode(&enc, PAGES_HEADER_LEN + 3 * 4096),
            Err(FormatError::LengthMismatch { .. })
        ));
        let mut bad = enc;
        bad[30] ^= 1;
        assert!(matches!(
            PagesHeader::decode(&bad, PAGES_HEADER_LEN + 8192),
            Err(FormatError::Checksum { .. })
        ));
        let mut bad = enc;
        bad[0] = 0;
        assert!(matches!(
            PagesHeader::decode(&bad, PAGES_HEADER_LEN + 8192),
            Err(FormatError::BadMagic { .. })
        ));
    }

    #[test]
    fn pages_verification() {
        let data: Vec<u8> = (0..HASH_BLOCK * 3 + 8192)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut h = PageHasher::new();
        for piece in data.chunks(1_000_003) {
            h.update(piece);
        }
        let hash = h.digest();
        assert_eq!(page_hash(&data, 1), hash);
        assert_eq!(page_hash(&data, 2), hash);
        assert_eq!(page_hash(&data, 7), hash);
        verify_pages(&data, hash).unwrap();
        assert!(verify_pages(&data, hash ^ 1).is_err());
        let mut bad = data.clone();
        bad[HASH_BLOCK + 17] ^= 1;
        assert!(verify_pages(&bad, hash).is_err());
        assert_eq!(page_hash(&[], 2), PageHasher::new().digest());
    }
}

/// Every CI run throws mutated images at the decoder (cargo-fuzz goes deeper, see
/// `fuzz/`): it must answer with an error, never panic, and never accept an invalid model.
#[cfg(test)]
mod mutation_tests {
    use super::*;
    use crate::model::tests_support::sample_image;
    use crate::validate;

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                0 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8);
                }
                1 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(bytes.len() + 1);
                    bytes.insert(i, rng.next() as u8);
                }
                3 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes.remove(i);
                }
                _ => {
                    let i = rng.below(bytes.len() + 1);
                    bytes.truncate(i);
                }
            }
        }
        bytes
    }

    #[test]
    fn mutated_payloads_never_panic() {
        let payload = encode_payload(&sample_image()).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut decoded = 0;
        for _ in 0..50_000 {
            let m = mutate(&mut rng, payload.clone());
            if let Ok(image) = decode_core(&wrap_payload(&m)) {
                decoded += 1;
                let _ = validate(&image);
            }
        }
        // The mutations must reach the decoder's success path too, not only its errors.
        assert!(decoded > 100, "only {decoded} mutants decoded");
    }

    #[test]
    fn mutated_files_never_panic() {
        let bytes = encode_core(&sample_image()).unwrap();
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let m = mutate(&mut rng, bytes.clone());
            let _ = decode_core(&m);
            let _ = PagesHeader::decode(&m, m.len() as u64);
        }
    }
}
