//! The byte layout of one stored row, shared by the cold tier and checkpoints so a row is
//! encoded one way everywhere: `updates`, `last_step`, `last_time` (u64 each), then the row's
//! `stride` f32 (weights and optimizer state), all little-endian. The cold tier stores it under
//! the key; a checkpoint record puts the key (u64 LE) in front.

use crate::RowMeta;

/// Bytes of a row record before its values.
pub const ROW_HEADER: usize = 24;
/// Bytes of a checkpoint record before its values (the key, then the row header).
pub const KEYED_HEADER: usize = 8 + ROW_HEADER;

/// Appends `meta` (without the key) and `values` to `out`.
pub fn encode_row_into(out: &mut Vec<u8>, meta: &RowMeta, values: &[f32]) {
    for word in [meta.updates, meta.last_step, meta.last_time] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(bytemuck::cast_slice(values));
}

/// A row's record (without the key).
pub fn encode_row(meta: &RowMeta, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ROW_HEADER + values.len() * 4);
    encode_row_into(&mut out, meta, values);
    out
}

/// Appends a checkpoint record: the key, then the row's record.
pub fn encode_keyed_row_into(out: &mut Vec<u8>, meta: &RowMeta, values: &[f32]) {
    out.extend_from_slice(&meta.key.to_le_bytes());
    encode_row_into(out, meta, values);
}

/// Decodes the record of `key` into `values` (which must hold `stride` values); `None` if the
/// record has the wrong size.
pub fn decode_row(key: u64, record: &[u8], values: &mut [f32]) -> Option<RowMeta> {
    if record.len() != ROW_HEADER + values.len() * 4 {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(record[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    bytemuck::cast_slice_mut::<f32, u8>(values).copy_from_slice(&record[ROW_HEADER..]);
    Some(RowMeta { key, updates: word(0), last_step: word(1), last_time: word(2) })
}

/// Decodes a checkpoint record (key in front); `None` if it has the wrong size.
pub fn decode_keyed_row(record: &[u8], values: &mut [f32]) -> Option<RowMeta> {
    let key = u64::from_le_bytes(record.get(..8)?.try_into().ok()?);
    decode_row(key, &record[8..], values)
}

/// Reads little-endian f32 from `bytes`, without copying when they happen to be aligned.
/// `None` if the length is not a multiple of 4.
pub fn f32s_from_le_bytes(bytes: &[u8]) -> Option<std::borrow::Cow<'_, [f32]>> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(aligned) => Some(std::borrow::Cow::Borrowed(aligned)),
        Err(_) => ember_core::codec::f32s_from_le(bytes).map(std::borrow::Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_wrong_sizes_are_refused() {
        let meta = RowMeta { key: 9, updates: 3, last_step: 17, last_time: 1_700_000_000 };
        let record = encode_row(&meta, &[1.5, -2.0, 0.25]);
        let mut values = [0f32; 3];
        assert_eq!(decode_row(9, &record, &mut values), Some(meta));
        assert_eq!(values, [1.5, -2.0, 0.25]);
        assert_eq!(decode_row(9, &record[1..], &mut values), None);
        let mut two = [0f32; 2];
        assert_eq!(decode_row(9, &record, &mut two), None);
        let mut keyed = Vec::new();
        encode_keyed_row_into(&mut keyed, &meta, &[1.5, -2.0, 0.25]);
        assert_eq!(keyed.len(), KEYED_HEADER + 12);
        assert_eq!(decode_keyed_row(&keyed, &mut values), Some(meta));
    }
}
