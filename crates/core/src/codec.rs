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

use half::slice::HalfFloatSliceExt;
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
        Compression::Fp16 => encode_fp16(residual),
        Compression::Onebit => {
            let mut out = Vec::with_capacity(onebit_len(residual.len(), ONEBIT_CHUNK));
            out.extend_from_slice(&(ONEBIT_CHUNK as u32).to_le_bytes());
            for chunk in residual.chunks_mut(ONEBIT_CHUNK) {
                encode_onebit_chunk(chunk, &mut out);
            }
            out
        }
    }
}

/// Values per block of the fp16 conversions: a stack buffer the slice conversions (F16C when
/// the CPU has it) work through.
const FP16_BLOCK: usize = 64;

fn encode_fp16(residual: &mut [f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(residual.len() * 2);
    let mut clamped = [0f32; FP16_BLOCK];
    let mut halves = [half::f16::ZERO; FP16_BLOCK];
    let mut back = [0f32; FP16_BLOCK];
    for block in residual.chunks_mut(FP16_BLOCK) {
        let n = block.len();
        for (c, r) in clamped.iter_mut().zip(block.iter()) {
            *c = r.clamp(-FP16_MAX, FP16_MAX);
        }
        halves[..n].convert_from_f32_slice(&clamped[..n]);
        back[..n].copy_from_slice(&clamped[..n]);
        halves[..n].convert_to_f32_slice(&mut back[..n]);
        for (r, b) in block.iter_mut().zip(&back) {
            *r -= b;
        }
        out.extend(halves[..n].iter().flat_map(|h| h.to_bits().to_le_bytes()));
    }
    out
}

/// Appends one onebit chunk (two scales, then the signs) and leaves its error in `chunk`.
/// The sums run in 8 independent f64 lanes so that they vectorize (f64: no overflow even at
/// f32::MAX magnitudes); a lane order other than left to right changes a scale by rounding
/// only, and the residual is computed from the scale actually sent.
fn encode_onebit_chunk(chunk: &mut [f32], out: &mut Vec<u8>) {
    const LANES: usize = 8;
    let (mut pos, mut neg, mut npos) = ([0f64; LANES], [0f64; LANES], [0u32; LANES]);
    let mut lanes = chunk.chunks_exact(LANES);
    for values in &mut lanes {
        for i in 0..LANES {
            let v = f64::from(values[i]);
            let nonneg = values[i] >= 0.0;
            pos[i] += if nonneg { v } else { 0.0 };
            neg[i] -= if nonneg { 0.0 } else { v };
            npos[i] += u32::from(nonneg);
        }
    }
    for (i, v) in lanes.remainder().iter().enumerate() {
        if *v >= 0.0 {
            pos[i] += f64::from(*v);
            npos[i] += 1;
        } else {
            neg[i] -= f64::from(*v);
        }
    }
    let npos = npos.iter().sum::<u32>() as usize;
    let nneg = chunk.len() - npos;
    let mean = |sum: f64, n: usize| if n > 0 { (sum / n as f64) as f32 } else { 0.0 };
    let scale_pos = mean(pos.iter().sum(), npos);
    let scale_neg = mean(neg.iter().sum(), nneg);
    out.extend_from_slice(&scale_pos.to_le_bytes());
    out.extend_from_slice(&scale_neg.to_le_bytes());
    let sign_byte = |values: &mut [f32]| {
        let mut byte = 0u8;
        for (i, v) in values.iter_mut().enumerate() {
            let nonneg = *v >= 0.0;
            byte |= u8::from(nonneg) << i;
            *v -= if nonneg { scale_pos } else { -scale_neg };
        }
        byte
    };
    // Whole bytes through fixed-size arrays, so that the compiler unrolls and vectorizes them.
    let mut bytes = chunk.chunks_exact_mut(8);
    for values in &mut bytes {
        let values: &mut [f32; 8] = values.try_into().unwrap_or_else(|_| unreachable!());
        out.push(sign_byte(values));
    }
    let tail = bytes.into_remainder();
    if !tail.is_empty() {
        out.push(sign_byte(tail));
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
            let mut out = vec![0f32; values];
            let mut halves = [half::f16::ZERO; FP16_BLOCK];
            for (block, encoded) in out.chunks_mut(FP16_BLOCK).zip(bytes.chunks(FP16_BLOCK * 2)) {
                let n = block.len();
                for (h, c) in halves.iter_mut().zip(encoded.chunks_exact(2)) {
                    *h = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                }
                halves[..n].convert_to_f32_slice(block);
            }
            Ok(out)
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
            let mut out = vec![0f32; values];
            let mut at = 4;
            for (c, decoded) in out.chunks_mut(chunk).enumerate() {
                let scale = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let (pos, neg) = (scale(&bytes[at..at + 4]), scale(&bytes[at + 4..at + 8]));
                for s in [pos, neg] {
                    if !s.is_finite() || s < 0.0 {
                        return Err(CodecError::BadScale(s, c));
                    }
                }
                at += 8;
                let signs = &bytes[at..at + decoded.len().div_ceil(8)];
                let signed = |values: &mut [f32], byte: u8| {
                    for (i, v) in values.iter_mut().enumerate() {
                        *v = if byte >> i & 1 == 1 { pos } else { -neg };
                    }
                };
                let whole_bytes = decoded.len() / 8;
                let mut whole = decoded.chunks_exact_mut(8);
                for (values, byte) in (&mut whole).zip(signs) {
                    let values: &mut [f32; 8] = values.try_into().unwrap_or_else(|_| unreachable!());
                    signed(values, *byte);
                }
                if let Some(last) = signs.get(whole_bytes) {
                    signed(whole.into_remainder(), *last);
                }
                at += signs.len();
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
