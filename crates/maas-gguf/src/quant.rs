//! Dequantisation of the block formats. Q4_1 (per 32 weights: f16 scale d,
//! f16 minimum m, 16 bytes of nibbles; element j is the low nibble of byte j,
//! element j+16 its high nibble): w = d·q + m. Q4_0: f16 d, nibbles,
//! w = d·(q − 8). Q8_0: f16 d, 32 signed bytes, w = d·q.

use crate::{GgufError, TensorType};

/// IEEE half to single precision (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    match (exp, frac) {
        (0, 0) => f32::from_bits(sign),
        (0, f) => {
            // Subnormal half: f·2⁻²⁴, exact in single precision.
            let magnitude = f as f32 * f32::from_bits(0x3380_0000);
            if sign != 0 {
                -magnitude
            } else {
                magnitude
            }
        }
        (0x1f, f) => f32::from_bits(sign | 0x7f80_0000 | (f << 13)),
        (e, f) => f32::from_bits(sign | ((e + 112) << 23) | (f << 13)),
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Decodes `elements` values of type `kind` from `bytes`.
pub fn dequantize(kind: TensorType, bytes: &[u8], elements: usize) -> Result<Vec<f32>, GgufError> {
    let (per_block, block_bytes) = kind.block();
    if !elements.is_multiple_of(per_block) || bytes.len() != elements / per_block * block_bytes {
        return Err(GgufError::Corrupt(format!(
            "{kind:?}: {} bytes do not hold {elements} elements",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(elements);
    match kind {
        TensorType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        TensorType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        ),
        TensorType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)),
        ),
        TensorType::Q8_0 => {
            for b in bytes.chunks_exact(block_bytes) {
                let d = half(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        TensorType::Q4_0 | TensorType::Q4_1 => {
            let with_min = kind == TensorType::Q4_1;
            for b in bytes.chunks_exact(block_bytes) {
                let d = half(b, 0);
                let (m, qs) = if with_min {
                    (half(b, 2), &b[4..20])
                } else {
                    (-8.0 * d, &b[2..18])
                };
                out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0f) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_convert_exactly() {
        for (bits, want) in [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x8001, -5.960_464_5e-8),
        ] {
            assert_eq!(f16_to_f32(bits), want, "{bits:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn q4_1_blocks_follow_the_nibble_layout() {
        // d = 0.5, m = -1.0; byte j holds element j (low) and j+16 (high).
        let mut block = vec![0u8; 20];
        block[0..2].copy_from_slice(&0x3800u16.to_le_bytes());
        block[2..4].copy_from_slice(&0xbc00u16.to_le_bytes());
        for j in 0..16 {
            block[4 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let w = dequantize(TensorType::Q4_1, &block, 32).unwrap();
        for j in 0..16 {
            assert_eq!(w[j], 0.5 * j as f32 - 1.0);
            assert_eq!(w[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q8_0_and_q4_0_blocks_decode() {
        let mut block = vec![0u8; 34];
        block[0..2].copy_from_slice(&0x4000u16.to_le_bytes()); // d = 2
        for j in 0..32 {
            block[2 + j] = (j as i8 - 16) as u8;
        }
        let w = dequantize(TensorType::Q8_0, &block, 32).unwrap();
        assert_eq!(w[0], -32.0);
        assert_eq!(w[31], 30.0);
        let mut block = vec![0u8; 18];
        block[0..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // d = 1
        block[2] = 0xf0;
        let w = dequantize(TensorType::Q4_0, &block, 32).unwrap();
        assert_eq!((w[0], w[16], w[1]), (-8.0, 7.0, -8.0));
    }

    #[test]
    fn a_wrong_byte_count_is_an_error() {
        assert!(dequantize(TensorType::Q4_1, &[0u8; 19], 32).is_err());
        assert!(dequantize(TensorType::Q8_0, &[0u8; 34], 31).is_err());
    }
}
