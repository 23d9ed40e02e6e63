//! Fuzz target: the image decoder and validator must reject, never panic or over-allocate,
//! whatever bytes `core.img` or the `pages.img` header hold.
#![no_main]

use ferry_image::{PagesHeader, decode_core, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = decode_core(data) {
        let _ = validate(&image);
    }
    let _ = PagesHeader::decode(data, data.len() as u64);
});
