//! The wire's value encoding: f32 as little-endian bytes, row-major. (Compressed gradient codecs
//! will live here too.)

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
mod tests {
    use super::*;

    #[test]
    fn decodes_little_endian_and_refuses_partial_values() {
        let bytes: Vec<u8> = [1.5f32, -2.0, f32::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(f32s_from_le(&bytes), Some(vec![1.5, -2.0, f32::MAX]));
        assert_eq!(f32s_from_le(&bytes[..7]), None);
        let mut two = [0f32; 2];
        read_f32s_le(&bytes, &mut two);
        assert_eq!(two, [1.5, -2.0]);
    }
}
