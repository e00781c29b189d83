//! Reading f32 tensors out of a `.safetensors` file (memory-mapped).

use safetensors::{Dtype, SafeTensors};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    #[error("tensor {name}: {problem}")]
    Tensor { name: String, problem: String },
}

pub struct Weights {
    map: memmap2::Mmap,
}

impl Weights {
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let file = std::fs::File::open(path).map_err(|e| WeightsError::Io(path.display().to_string(), e))?;
        // SAFETY (memmap): the file is opened read-only and the models
        // directory is not modified while a worker runs; the mapping is
        // copied into owned vectors right away.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| WeightsError::Io(path.display().to_string(), e))?;
        SafeTensors::deserialize(&map).map_err(|e| WeightsError::Format(e.to_string()))?;
        Ok(Self { map })
    }

    /// A tensor as an owned f32 vector, checked against the expected shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let st = SafeTensors::deserialize(&self.map).map_err(|e| WeightsError::Format(e.to_string()))?;
        let t = st.tensor(name).map_err(|_| WeightsError::Tensor { name: name.into(), problem: "missing".into() })?;
        if t.shape() != shape {
            return Err(WeightsError::Tensor { name: name.into(), problem: format!("shape {:?}, expected {shape:?}", t.shape()) });
        }
        match t.dtype() {
            Dtype::F32 => Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            Dtype::F16 => Ok(t.data().chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()),
            Dtype::BF16 => Ok(t.data().chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)).collect()),
            other => Err(WeightsError::Tensor { name: name.into(), problem: format!("dtype {other:?}, expected F32, F16 or BF16") }),
        }
    }
}

/// IEEE half to single precision (exact: every half is a float).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal half: f·2⁻²⁴, exact in single precision.
        (0, f) => {
            let magnitude = f as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn halves_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x03ff), 6.097_555e-5);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x8001), -5.960_464_5e-8);
    }
}
