//! A reader for GGUF files (version 2 and 3): header, metadata, tensor
//! directory and alignment, with dequantisation of the tensor types the
//! platform's models use (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
//!
//! Parsing works on a byte slice and checks every length and offset against
//! it: a truncated or corrupt file is an error, never a panic or an
//! out-of-bounds read (tests mutate real files at random, and `fuzz/` holds a
//! libFuzzer target). [`GgufFile::open`] memory-maps a file.

mod parse;
mod quant;

pub use parse::{Gguf, GgufError, Tensor, TensorType, Value};
pub use quant::{dequantize, f16_to_f32};

use std::path::Path;

/// A memory-mapped GGUF file.
pub struct GgufFile {
    map: memmap2::Mmap,
    pub gguf: Gguf,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = std::fs::File::open(path)
            .map_err(|e| GgufError::Io(format!("{}: {e}", path.display())))?;
        // SAFETY (memmap): opened read-only; model files are not modified
        // while a worker runs. Every read through the map is bounds-checked.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| GgufError::Io(format!("{}: {e}", path.display())))?;
        let gguf = Gguf::parse(&map)?;
        Ok(Self { map, gguf })
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, t: &Tensor) -> &[u8] {
        // `Gguf::parse` checked that every tensor lies inside the file.
        &self.map[t.file_offset..t.file_offset + t.byte_len]
    }

    /// A tensor by name, dequantised to f32.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self
            .gguf
            .tensor(name)
            .ok_or_else(|| GgufError::Missing(name.to_owned()))?;
        dequantize(t.kind, self.tensor_bytes(t), t.elements())
    }
}
