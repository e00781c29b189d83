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
        let file = std::fs::File::open(path)
            .map_err(|e| WeightsError::Io(path.display().to_string(), e))?;
        // SAFETY (memmap): the file is opened read-only and the models
        // directory is not modified while a worker runs; the mapping is
        // copied into owned vectors right away.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| WeightsError::Io(path.display().to_string(), e))?;
        SafeTensors::deserialize(&map).map_err(|e| WeightsError::Format(e.to_string()))?;
        Ok(Self { map })
    }

    /// A tensor as an owned f32 vector, checked against the expected shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let st =
            SafeTensors::deserialize(&self.map).map_err(|e| WeightsError::Format(e.to_string()))?;
        let t = st.tensor(name).map_err(|_| WeightsError::Tensor {
            name: name.into(),
            problem: "missing".into(),
        })?;
        if t.shape() != shape {
            return Err(WeightsError::Tensor {
                name: name.into(),
                problem: format!("shape {:?}, expected {shape:?}", t.shape()),
            });
        }
        match t.dtype() {
            Dtype::F32 => Ok(t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            Dtype::F16 | Dtype::BF16 => {
                let kind = if t.dtype() == Dtype::F16 {
                    maas_gguf::TensorType::F16
                } else {
                    maas_gguf::TensorType::BF16
                };
                let n = shape.iter().product();
                maas_gguf::dequantize(kind, t.data(), n).map_err(|e| WeightsError::Tensor {
                    name: name.into(),
                    problem: e.to_string(),
                })
            }
            other => Err(WeightsError::Tensor {
                name: name.into(),
                problem: format!("dtype {other:?}, expected F32, F16 or BF16"),
            }),
        }
    }
}
