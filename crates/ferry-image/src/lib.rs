//! The process image: everything ferry knows about a frozen process, as plain data.
//!
//! This crate owns the *model* ([`model`]), its on-disk *container* ([`format`]) and the
//! *validation* that every decoded image passes before anything acts on it ([`validate`]).
//! It makes no system calls: capture and restore live in `ferry-checkpoint`, the kernel in
//! `ferry-sys`.
//!
//! An image is a directory with two files:
//!
//! ```text
//! core.img   magic "FERRYIMG" | major u16 | minor u16 | flags u32 | len u64 | payload | xxh3 u64
//! pages.img  4 KiB header (magic "FERRYPGS", version, image id, length, hash) | raw pages
//! ```
//!
//! A process tree adds `tree.img` (a [`tree::TreeImage`], framed like `core.img` with magic
//! "FERRYTRE") and one sub-directory `pid-N` per other living process, each an image of its own.
//!
//! The payload of `core.img` is a [`model::ProcessImage`] encoded with postcard. Page bytes
//! never go through serde: `pages.img` holds them raw, in the order of
//! [`model::PageIndex::runs`].
#![forbid(unsafe_code)]

pub mod format;
pub mod model;
pub mod tree;
pub mod validate;

pub use format::{FormatError, PagesHeader, decode_core, decode_tree, encode_core, encode_tree};
pub use model::*;
pub use tree::{
    ExitStatus, FdRef, MemRef, SharedFile, SharedMemory, TreeImage, TreeMember, validate_tree,
};
pub use validate::{ValidationError, validate};
