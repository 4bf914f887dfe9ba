//! The gRPC codec every generated client and server uses: prost's encoding, with a decoding
//! failure reported as InvalidArgument.
//!
//! tonic's stock prost codec answers a message that does not parse with Internal (following
//! gRPC's status-code table). Ember keeps Internal for its own bugs (DESIGN.md, "Wire
//! conventions"): bytes that are not the message a method takes are the sender's mistake, and
//! the sender is told so.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// `application/grpc+proto` via prost; see the module docs for how it differs from tonic's.
#[derive(Debug, Clone)]
pub struct WireCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; a message that does not parse is InvalidArgument.
#[derive(Debug, Clone)]
pub struct WireDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_message(buf).map(Some)
    }
}

/// Parses one `U`; bytes that are not one are InvalidArgument, naming the message type.
pub fn decode_message<U: Message + Default>(buf: impl bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| {
        crate::error::status(&ember_core::Refusal::invalid(format!("malformed {} message: {e}", short_name::<U>())))
    })
}

/// `PullRequest` for `ember_proto::v1::PullRequest`.
fn short_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn garbage_bytes_are_invalid_argument_and_good_ones_decode() {
        let request = v1::PullRequest { table: "emb".into(), keys: vec![1, 2, 3] };
        let decoded: v1::PullRequest = decode_message(&request.encode_to_vec()[..]).unwrap();
        assert_eq!(decoded, request);
        // A truncated length, a field of wire type 7, random noise.
        for garbage in [&[0x0a, 0xff][..], &[0x0f, 1, 2, 3], &[0xde, 0xad, 0xbe, 0xef, 0x99, 0x11]] {
            let status = decode_message::<v1::PullRequest>(garbage).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{garbage:?}: {status:?}");
            assert!(status.message().contains("malformed PullRequest"), "{}", status.message());
        }
    }
}
