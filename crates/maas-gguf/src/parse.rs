//! The container format.

use std::collections::HashMap;

const MAGIC: &[u8; 4] = b"GGUF";
/// Refuse absurd counts before allocating for them.
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 8;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("I/O: {0}")]
    Io(String),
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    #[error("unsupported GGUF version {0} (2 and 3 are supported)")]
    Version(u32),
    #[error("truncated: {what} at byte {at} runs past the end of the file ({len} bytes)")]
    Truncated {
        what: &'static str,
        at: usize,
        len: usize,
    },
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("tensor type {0} is not supported")]
    UnsupportedType(u32),
    #[error("no tensor named {0}")]
    Missing(String),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type as u64 (negative values: None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(f64::from(v)),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Tensor element encodings (ggml type ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl TensorType {
    fn from_id(id: u32) -> Result<Self, GgufError> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => return Err(GgufError::UnsupportedType(other)),
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (row length).
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// Absolute offset of the data in the file.
    pub file_offset: usize,
    pub byte_len: usize,
}

impl Tensor {
    pub fn elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<Tensor>,
    pub alignment: usize,
    index: HashMap<String, usize>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(GgufError::Truncated {
            what,
            at: self.pos,
            len: self.buf.len(),
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, GgufError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, GgufError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn count(&mut self, what: &'static str) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return Err(GgufError::Corrupt(format!("{what} of {n} is implausible")));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        let n =
            usize::try_from(n).map_err(|_| GgufError::Corrupt(format!("{what}: length {n}")))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| GgufError::Corrupt(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.u8("u8 value")?),
            1 => Value::I8(self.u8("i8 value")? as i8),
            2 => Value::U16(self.u16("u16 value")?),
            3 => Value::I16(self.u16("i16 value")? as i16),
            4 => Value::U32(self.u32("u32 value")?),
            5 => Value::I32(self.u32("i32 value")? as i32),
            6 => Value::F32(f32::from_bits(self.u32("f32 value")?)),
            7 => match self.u8("bool value")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::Corrupt(format!("bool value {b}"))),
            },
            8 => Value::String(self.string("string value")?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Corrupt("arrays nested too deep".into()));
                }
                let elem = self.u32("array element type")?;
                let n = self.count("array length")?;
                // Each element takes at least one byte: a longer array cannot fit.
                if n > self.buf.len().saturating_sub(self.pos) {
                    return Err(GgufError::Truncated {
                        what: "array",
                        at: self.pos,
                        len: self.buf.len(),
                    });
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64("u64 value")?),
            11 => Value::I64(self.u64("i64 value")? as i64),
            12 => Value::F64(f64::from_bits(self.u64("f64 value")?)),
            other => {
                return Err(GgufError::Corrupt(format!(
                    "unknown metadata value type {other}"
                )))
            }
        })
    }
}

impl Gguf {
    /// Parses a whole file held in memory.
    pub fn parse(buf: &[u8]) -> Result<Self, GgufError> {
        let mut r = Reader { buf, pos: 0 };
        if r.take(4, "magic")? != MAGIC {
            return Err(GgufError::BadMagic);
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.count("tensor count")?;
        let n_kv = r.count("metadata count")?;
        let mut metadata = HashMap::with_capacity(n_kv.min(4096));
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata type")?;
            let v = r.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => {
                let a = v.as_u64().ok_or_else(|| {
                    GgufError::Corrupt("general.alignment is not an integer".into())
                })?;
                if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
                    return Err(GgufError::Corrupt(format!("general.alignment {a}")));
                }
                a as usize
            }
        };
        let mut raw = Vec::with_capacity(n_tensors.min(65536));
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimensions")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name}: {n_dims} dimensions"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let kind = TensorType::from_id(r.u32("tensor type")?)?;
            let offset = r.u64("tensor offset")?;
            raw.push((name, dims, kind, offset));
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut index = HashMap::with_capacity(raw.len());
        for (name, dims, kind, offset) in raw {
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name}: size overflows")))?;
            let (per_block, block_bytes) = kind.block();
            if elements % per_block as u64 != 0 || dims[0] % per_block as u64 != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name}: rows are not whole blocks"
                )));
            }
            let byte_len = (elements / per_block as u64)
                .checked_mul(block_bytes as u64)
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name}: size overflows")))?;
            if offset % alignment as u64 != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name}: offset {offset} is not aligned"
                )));
            }
            let start = (data_start as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(byte_len));
            match (start, end) {
                (Some(s), Some(e)) if e <= buf.len() as u64 => {
                    index.insert(name.clone(), tensors.len());
                    tensors.push(Tensor {
                        name,
                        dims,
                        kind,
                        file_offset: s as usize,
                        byte_len: byte_len as usize,
                    });
                }
                _ => {
                    return Err(GgufError::Truncated {
                        what: "tensor data",
                        at: data_start,
                        len: buf.len(),
                    })
                }
            }
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            index,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// An integer metadata value.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| GgufError::Corrupt(format!("metadata {key} missing or not an integer")))
    }

    /// A string metadata value.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| GgufError::Corrupt(format!("metadata {key} missing or not a string")))
    }
}
