//! The wire's value encodings.
//!
//! Values travel as little-endian f32, row-major. Gradients may instead travel compressed:
//!
//! - **fp16**: IEEE half precision, 2 bytes a value (values clamped to +-65504).
//! - **onebit** (Seide et al. 2014; Strom 2015): a 4-byte header holding the chunk length C (512), then
//!   per chunk of C values (the last may be shorter) two f32 scales, the mean of the chunk's
//!   non-negative values and the mean magnitude of its negative ones, and one sign bit per value
//!   (bit i of byte i/8; 1 = non-negative). A value decodes to +scale_pos or -scale_neg.
//!
//! Invariant (error feedback): [`encode_with_residual`] encodes `gradient + residual` and leaves
//! in `residual` exactly what the encoding lost, so decode(encoded) + residual' equals gradient +
//! residual (up to f32 rounding): information is delayed to a later push, never dropped.

use serde::{Deserialize, Serialize};

/// How a gradient is encoded on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Little-endian f32.
    #[default]
    None,
    /// IEEE half precision.
    Fp16,
    /// Sign bits plus two scales per chunk.
    Onebit,
}

/// Values per onebit chunk (one pair of scales each): 8 bytes of scales per 64 of signs keeps
/// the ratio to f32 at 28x on large tensors (256 would give 25.6x).
pub const ONEBIT_CHUNK: usize = 512;
const FP16_MAX: f32 = 65504.0;

/// Why an encoded gradient was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The byte count does not match the value count.
    #[error("{encoding:?} gradient of {bytes} bytes for {values} values (expected {expected})")]
    Length {
        /// The encoding.
        encoding: Compression,
        /// Bytes received.
        bytes: usize,
        /// Values the request implies.
        values: usize,
        /// Bytes the format implies.
        expected: usize,
    },
    /// A onebit header naming a zero chunk length.
    #[error("onebit chunk length 0")]
    ZeroChunk,
    /// A onebit scale that is negative or not finite.
    #[error("onebit scale {0} in chunk {1} is not a finite non-negative number")]
    BadScale(f32, usize),
}

fn onebit_len(values: usize, chunk: usize) -> usize {
    let chunks = values.div_ceil(chunk);
    4 + chunks * 8 + (0..chunks).map(|c| (values - c * chunk).min(chunk).div_ceil(8)).sum::<usize>()
}

/// Bytes of `values` values in `encoding` (onebit with the default chunk).
pub fn encoded_len(encoding: Compression, values: usize) -> usize {
    match encoding {
        Compression::None => values * 4,
        Compression::Fp16 => values * 2,
        Compression::Onebit => onebit_len(values, ONEBIT_CHUNK),
    }
}

/// Encodes `gradient + residual` and stores the encoding's error in `residual`. `residual` must
/// have `gradient.len()` values (zeros for a first push).
pub fn encode_with_residual(encoding: Compression, gradient: &[f32], residual: &mut [f32]) -> Vec<u8> {
    debug_assert_eq!(gradient.len(), residual.len());
    for (r, g) in residual.iter_mut().zip(gradient) {
        *r += g;
    }
    // `residual` now holds the values to send; below it becomes what was not sent.
    match encoding {
        Compression::None => {
            let out = residual.iter().flat_map(|v| v.to_le_bytes()).collect();
            residual.fill(0.0);
            out
        }
        Compression::Fp16 => {
            let mut out = Vec::with_capacity(residual.len() * 2);
            for r in residual.iter_mut() {
                let h = half::f16::from_f32(r.clamp(-FP16_MAX, FP16_MAX));
                out.extend_from_slice(&h.to_bits().to_le_bytes());
                *r -= h.to_f32();
            }
            out
        }
        Compression::Onebit => {
            let mut out = Vec::with_capacity(onebit_len(residual.len(), ONEBIT_CHUNK));
            out.extend_from_slice(&(ONEBIT_CHUNK as u32).to_le_bytes());
            for chunk in residual.chunks_mut(ONEBIT_CHUNK) {
                let (mut pos, mut npos, mut neg, mut nneg) = (0f64, 0usize, 0f64, 0usize);
                for v in chunk.iter() {
                    if *v >= 0.0 {
                        pos += f64::from(*v);
                        npos += 1;
                    } else {
                        neg -= f64::from(*v);
                        nneg += 1;
                    }
                }
                let scale_pos = if npos > 0 { (pos / npos as f64) as f32 } else { 0.0 };
                let scale_neg = if nneg > 0 { (neg / nneg as f64) as f32 } else { 0.0 };
                out.extend_from_slice(&scale_pos.to_le_bytes());
                out.extend_from_slice(&scale_neg.to_le_bytes());
                for bits in chunk.chunks_mut(8) {
                    let mut byte = 0u8;
                    for (i, v) in bits.iter_mut().enumerate() {
                        if *v >= 0.0 {
                            byte |= 1 << i;
                            *v -= scale_pos;
                        } else {
                            *v += scale_neg;
                        }
                    }
                    out.push(byte);
                }
            }
            out
        }
    }
}

/// Decodes `values` values of `encoding`.
pub fn decode(encoding: Compression, bytes: &[u8], values: usize) -> Result<Vec<f32>, CodecError> {
    let length = |expected: usize| CodecError::Length { encoding, bytes: bytes.len(), values, expected };
    match encoding {
        Compression::None => {
            if bytes.len() != values * 4 {
                return Err(length(values * 4));
            }
            f32s_from_le(bytes).ok_or(length(values * 4))
        }
        Compression::Fp16 => {
            if bytes.len() != values * 2 {
                return Err(length(values * 2));
            }
            Ok(bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect())
        }
        Compression::Onebit => {
            let Some(header) = bytes.get(..4) else { return Err(length(onebit_len(values, ONEBIT_CHUNK))) };
            let chunk = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if chunk == 0 {
                return Err(CodecError::ZeroChunk);
            }
            let expected = onebit_len(values, chunk);
            if bytes.len() != expected {
                return Err(length(expected));
            }
            let mut out = Vec::with_capacity(values);
            let mut at = 4;
            for (c, start) in (0..values).step_by(chunk).enumerate() {
                let n = (values - start).min(chunk);
                let scale = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let (pos, neg) = (scale(&bytes[at..at + 4]), scale(&bytes[at + 4..at + 8]));
                for s in [pos, neg] {
                    if !s.is_finite() || s < 0.0 {
                        return Err(CodecError::BadScale(s, c));
                    }
                }
                at += 8;
                for i in 0..n {
                    let bit = bytes[at + i / 8] >> (i % 8) & 1;
                    out.push(if bit == 1 { pos } else { -neg });
                }
                at += n.div_ceil(8);
            }
            Ok(out)
        }
    }
}

/// Decodes little-endian f32; `None` if the length is not a multiple of 4.
pub fn f32s_from_le(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = vec![0f32; bytes.len() / 4];
    read_f32s_le(bytes, &mut out);
    Some(out)
}

/// Decodes `out.len()` little-endian f32 from the front of `bytes` (which holds at least that many).
#[inline]
pub fn read_f32s_le(bytes: &[u8], out: &mut [f32]) {
    for (v, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

#[cfg(test)]
mod tests;
