//! Fuzz target: arbitrary bytes as the *payload* of a correctly framed and checksummed
//! core.img, so that the fuzzer reaches the postcard decoder and every validation rule (a
//! hand-crafted image passes the checksum by construction).
#![no_main]

use ferry_image::format::wrap_payload;
use ferry_image::{decode_core, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    if let Ok(image) = decode_core(&wrap_payload(payload)) {
        let _ = validate(&image);
    }
});
