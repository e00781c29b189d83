//! `cargo +nightly fuzz run parse` (from crates/maas-gguf): any bytes must
//! parse to a value or an error, and a parsed file's tensors must decode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = maas_gguf::Gguf::parse(data) {
        for t in &g.tensors {
            let bytes = &data[t.file_offset..t.file_offset + t.byte_len];
            let _ = maas_gguf::dequantize(t.kind, bytes, t.elements());
        }
    }
});
