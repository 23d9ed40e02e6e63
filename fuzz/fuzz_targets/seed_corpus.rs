//! Writes a valid core.img into the corpus directory given as argument (the fuzzer's seed).
use ferry_image::encode_core;
use ferry_image::format::encode_payload;
use ferry_image::model::tests_support::sample_image;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus/decode_image".into());
    std::fs::create_dir_all(&dir).expect("corpus directory");
    let bytes = encode_core(&sample_image()).expect("encoding the sample image");
    std::fs::write(format!("{dir}/sample-core.img"), bytes).expect("writing the seed");
    let payload_dir = format!("{dir}/../decode_payload");
    std::fs::create_dir_all(&payload_dir).expect("corpus directory");
    let payload = encode_payload(&sample_image()).expect("encoding the sample payload");
    std::fs::write(format!("{payload_dir}/sample-payload"), payload).expect("writing the seed");
}
