//! Calls with raw message bytes: what a client that does not speak the contract (or a fuzzer)
//! sends. Servers must answer such calls with InvalidArgument, never crash or say Internal;
//! tests and probes use this to check that.

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::ClientError;

/// Sends `body` as the request message of the gRPC method at `path` (e.g.
/// `/ember.v1.ParameterServer/Pull`) on `addr` with `credentials`; returns the response
/// message's bytes, or the server's status.
pub async fn call_raw(
    addr: &str,
    credentials: &crate::Credentials,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Result<Vec<u8>, Status>, ClientError> {
    let channel = credentials.channel(addr).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return Ok(Err(Status::unavailable(e.to_string())));
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    Ok(grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(tonic::Response::into_inner))
}

/// Bytes in, bytes out.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}
