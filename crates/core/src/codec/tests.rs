use proptest::prelude::*;

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

#[test]
fn onebit_sends_signs_and_two_means_per_chunk() {
    let g = [3.0f32, -1.0, 1.0, -3.0, 2.0];
    let mut r = [0f32; 5];
    let bytes = encode_with_residual(Compression::Onebit, &g, &mut r);
    assert_eq!(bytes.len(), 4 + 8 + 1, "header, two scales, one byte of signs");
    assert_eq!(decode(Compression::Onebit, &bytes, 5).unwrap(), vec![2.0, -2.0, 2.0, -2.0, 2.0]);
    assert_eq!(r, [1.0, 1.0, -1.0, -1.0, 0.0], "the error is kept for the next push");
    // The next push of zeros sends what was held back (zero counts as non-negative).
    let bytes = encode_with_residual(Compression::Onebit, &[0.0; 5], &mut r);
    let sent = decode(Compression::Onebit, &bytes, 5).unwrap();
    let third = 2.0f32 / 3.0;
    assert_eq!(sent, vec![third, third, -1.0, -1.0, third]);
    assert_eq!(r, [1.0 - third, 1.0 - third, 0.0, 0.0, -third]);
}

#[test]
fn compressed_sizes_are_what_the_format_says() {
    // 1000 values: header 4 + 2 chunks x 8 bytes of scales + 64 + 61 bytes of signs.
    assert_eq!(encoded_len(Compression::Onebit, 1000), 4 + 16 + 125);
    assert_eq!(encoded_len(Compression::Fp16, 1000), 2000);
    assert_eq!(encoded_len(Compression::None, 1000), 4000);
    assert!(encoded_len(Compression::None, 100_000) / encoded_len(Compression::Onebit, 100_000) >= 25);
}

#[test]
fn malformed_encodings_are_refused() {
    let mut r = vec![0f32; 600];
    let g: Vec<f32> = (0..600).map(|i| i as f32 - 300.0).collect();
    let bytes = encode_with_residual(Compression::Onebit, &g, &mut r);
    assert!(matches!(decode(Compression::Onebit, &bytes[..bytes.len() - 1], 600), Err(CodecError::Length { .. })));
    // (Sign bits are padded to a byte: 601 values would fit the same bytes; 610 do not.)
    assert!(matches!(decode(Compression::Onebit, &bytes, 610), Err(CodecError::Length { .. })));
    assert!(matches!(decode(Compression::Onebit, &bytes[..2], 600), Err(CodecError::Length { .. })));
    let mut zero_chunk = bytes.clone();
    zero_chunk[..4].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(decode(Compression::Onebit, &zero_chunk, 600), Err(CodecError::ZeroChunk));
    let mut bad_scale = bytes.clone();
    bad_scale[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(matches!(decode(Compression::Onebit, &bad_scale, 600), Err(CodecError::BadScale(..))));
    bad_scale[4..8].copy_from_slice(&(-1.0f32).to_le_bytes());
    assert!(matches!(decode(Compression::Onebit, &bad_scale, 600), Err(CodecError::BadScale(..))));
    assert!(matches!(decode(Compression::Fp16, &[0; 3], 2), Err(CodecError::Length { .. })));
    assert!(matches!(decode(Compression::None, &[0; 7], 2), Err(CodecError::Length { .. })));
}

fn values() -> impl Strategy<Value = Vec<f32>> {
    // NaN-free, including extremes (large magnitudes, subnormals, zeros of both signs).
    let value = prop_oneof![
        -1e3f32..1e3f32,
        -1e30f32..1e30f32,
        Just(0.0f32),
        Just(-0.0f32),
        Just(f32::MIN_POSITIVE / 4.0),
        Just(1e-38f32),
    ];
    prop::collection::vec(value, 0..700)
}

proptest! {
    #[test]
    fn decoded_plus_new_residual_is_gradient_plus_old_residual(
        g in values(),
        r0 in values(),
        which in 0usize..3,
    ) {
        let encoding = [Compression::None, Compression::Fp16, Compression::Onebit][which];
        let n = g.len();
        let mut r: Vec<f32> = r0.iter().copied().cycle().take(n).collect();
        if r0.is_empty() {
            r = vec![0.0; n];
        }
        let target: Vec<f32> = g.iter().zip(&r).map(|(a, b)| a + b).collect();
        let bytes = encode_with_residual(encoding, &g, &mut r);
        prop_assert_eq!(bytes.len(), encoded_len(encoding, n));
        let decoded = decode(encoding, &bytes, n).unwrap();
        for i in 0..n {
            let back = decoded[i] + r[i];
            // One rounding in the residual's subtraction and one in this sum.
            let tol = 2.0 * f32::EPSILON * target[i].abs().max(decoded[i].abs()).max(r[i].abs());
            prop_assert!((back - target[i]).abs() <= tol, "{:?} {}: {} + {} != {}", encoding, i, decoded[i], r[i], target[i]);
        }
    }
}
