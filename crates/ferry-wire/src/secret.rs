//! The cluster secret: the 32-byte pre-shared key every ferry daemon of a cluster holds.
//!
//! Holding it is what makes a peer a member: the Noise handshake (`psk0`) succeeds only between
//! two holders. On disk it is either 32 raw bytes or 64 hexadecimal characters with an optional
//! trailing newline; [`ClusterSecret::write`] writes the hex form into a new file of mode 0600.
//! Anyone who can read the file can restore processes with any credentials on every node of the
//! cluster: keep it readable by root only (loading warns when group or others can read it).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Length of the cluster secret in bytes.
pub const SECRET_LEN: usize = 32;

/// Longest file [`ClusterSecret::load`] reads (anything longer is refused anyway).
const MAX_FILE: u64 = 128;

/// The pre-shared key of a ferry cluster. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; SECRET_LEN]);

/// Errors reading, parsing, generating or writing a cluster secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read cluster secret {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cluster secret {path} has {len} bytes: expected 32 raw bytes or 64 hex characters \
         (optionally followed by a newline)"
    )]
    Length { path: PathBuf, len: String },
    #[error(
        "cluster secret {path} is not hexadecimal: byte {offset} is {byte:#04x} (64 hex \
         characters expected)"
    )]
    NotHex {
        path: PathBuf,
        offset: usize,
        byte: u8,
    },
    #[error("cannot write cluster secret {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot generate a cluster secret: the system random generator failed: {0}")]
    Random(getrandom::Error),
}

impl ClusterSecret {
    /// A secret from its bytes.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> ClusterSecret {
        ClusterSecret(bytes)
    }

    /// A public name of the cluster derived from the secret (SHA-256 of a label and the
    /// secret, 16 hex digits): clusters with different secrets do not mix their gossip. It
    /// reveals nothing usable about the secret and authenticates nothing.
    pub fn cluster_name(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"ferry cluster name v1\0");
        ctx.update(&self.0);
        let d = ctx.finish();
        d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A fresh random secret from the operating system's generator.
    pub fn generate() -> Result<ClusterSecret, SecretError> {
        let mut b = [0u8; SECRET_LEN];
        getrandom::fill(&mut b).map_err(SecretError::Random)?;
        Ok(ClusterSecret(b))
    }

    /// Reads a secret file: 32 raw bytes, or 64 hex characters and an optional newline.
    pub fn load(path: impl AsRef<Path>) -> Result<ClusterSecret, SecretError> {
        let path = path.as_ref();
        let read_err = |source| SecretError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        if let Ok(meta) = file.metadata()
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:04o}", meta.permissions().mode() & 0o7777),
                "cluster secret is accessible to group or others; it should be mode 0600"
            );
        }
        let mut bytes = Vec::with_capacity(MAX_FILE as usize);
        file.take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        Self::parse(&bytes).map_err(|e| match e {
            ParseError::Length(n) => SecretError::Length {
                path: path.to_owned(),
                len: if n as u64 > MAX_FILE {
                    format!("more than {MAX_FILE}")
                } else {
                    n.to_string()
                },
            },
            ParseError::NotHex { offset, byte } => SecretError::NotHex {
                path: path.to_owned(),
                offset,
                byte,
            },
        })
    }

    fn parse(bytes: &[u8]) -> Result<ClusterSecret, ParseError> {
        if let Ok(raw) = <[u8; SECRET_LEN]>::try_from(bytes) {
            return Ok(ClusterSecret(raw));
        }
        let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if text.len() != 2 * SECRET_LEN {
            return Err(ParseError::Length(bytes.len()));
        }
        let mut out = [0u8; SECRET_LEN];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(ParseError::NotHex {
                offset: 2 * i,
                byte: pair[0],
            })?;
            let lo = hex_value(pair[1]).ok_or(ParseError::NotHex {
                offset: 2 * i + 1,
                byte: pair[1],
            })?;
            out[i] = hi << 4 | lo;
        }
        Ok(ClusterSecret(out))
    }

    /// Writes the secret as 64 hex characters and a newline into a new file of mode 0600.
    /// Refuses to replace an existing file (a changed secret splits the cluster).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), SecretError> {
        let path = path.as_ref();
        let write_err = |source| SecretError::Write {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        let mut text = String::with_capacity(2 * SECRET_LEN + 1);
        for b in self.0 {
            text.push(HEX[usize::from(b >> 4)] as char);
            text.push(HEX[usize::from(b & 0xf)] as char);
        }
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

enum ParseError {
    Length(usize),
    NotHex { offset: usize, byte: u8 },
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn generate_write_load_round_trip_with_mode_0600() {
        let dir = tmp();
        let path = dir.path().join("secret");
        let s = ClusterSecret::generate().unwrap();
        assert_ne!(s, ClusterSecret::generate().unwrap());
        s.write(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert_eq!(ClusterSecret::load(&path).unwrap(), s);

        // An existing file is never replaced.
        let e = ClusterSecret::generate().unwrap().write(&path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot write cluster secret {}: ", path.display())),
            "{e}"
        );
        assert_eq!(ClusterSecret::load(&path).unwrap(), s);
    }

    #[test]
    fn cluster_name_is_stable_and_differs_per_secret() {
        let a = ClusterSecret::from_bytes([7; 32]);
        let name = a.cluster_name();
        assert_eq!(name.len(), 16);
        assert_eq!(name, ClusterSecret::from_bytes([7; 32]).cluster_name());
        assert_ne!(name, ClusterSecret::from_bytes([8; 32]).cluster_name());
        assert!(!name.contains("0707"), "{name}");
    }

    #[test]
    fn accepts_raw_and_hex_forms() {
        let dir = tmp();
        let raw: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x0a);
        let want = ClusterSecret::from_bytes(raw);
        let hex: String = raw.iter().map(|b| format!("{b:02X}")).collect();
        for (name, content) in [
            ("raw", raw.to_vec()),
            ("hex", hex.clone().into_bytes()),
            ("hex-nl", format!("{hex}\n").into_bytes()),
            ("lower-nl", format!("{}\n", hex.to_lowercase()).into_bytes()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            assert_eq!(ClusterSecret::load(&p).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn refuses_other_lengths_and_non_hex_with_clear_errors() {
        let dir = tmp();
        let p = dir.path().join("s");
        for (content, len) in [
            (vec![1u8; 31], "31"),
            (vec![1u8; 33], "33"),
            (vec![], "0"),
            (vec![b'a'; 63], "63"),
            (b"a".repeat(64).into_iter().chain(*b"\n\n").collect(), "66"),
            (vec![0u8; 4096], "more than 128"),
        ] {
            std::fs::write(&p, &content).unwrap();
            assert_eq!(
                ClusterSecret::load(&p).unwrap_err().to_string(),
                format!(
                    "cluster secret {} has {len} bytes: expected 32 raw bytes or 64 hex \
                     characters (optionally followed by a newline)",
                    p.display()
                )
            );
        }
        let mut text = b"0".repeat(64);
        text[10] = b'g';
        std::fs::write(&p, &text).unwrap();
        assert_eq!(
            ClusterSecret::load(&p).unwrap_err().to_string(),
            format!(
                "cluster secret {} is not hexadecimal: byte 10 is 0x67 (64 hex characters \
                 expected)",
                p.display()
            )
        );
        let missing = dir.path().join("missing");
        assert!(
            ClusterSecret::load(&missing)
                .unwrap_err()
                .to_string()
                .starts_with(&format!(
                    "cannot read cluster secret {}: No such file",
                    missing.display()
                ))
        );
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let s = ClusterSecret::from_bytes([0xab; 32]);
        assert_eq!(format!("{s:?}"), "ClusterSecret(..)");
    }
}
