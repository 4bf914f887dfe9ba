//! Dense tables through [`PsClient`]: each dense table lives whole on the server that owns its
//! name (`ShardMap::server_of_name`), so a pull or push of several tables is one call per server
//! holding any of them, the servers in parallel (a DeepFM MLP's six tables were six calls each
//! way per batch); compressed pushes keep one error-feedback residual per table.

use bytes::Bytes;
use ember_core::codec::{self, read_f32s_le, Compression};
use ember_proto::v1;

use super::{f32s_le, wire_encoding, PsClient};
use crate::ClientError;

/// One dense gradient's fate: the table's version after it, and its staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DensePushed {
    /// The table's version after the push.
    pub version: u64,
    /// Versions the table moved on between the gradient's pull and its arrival.
    pub staleness: u64,
}

impl PsClient {
    /// Applies dense gradients compressed with `encoding`, with one residual per gradient
    /// (error feedback, as in [`Self::push_encoded`]; `Compression::None` is a plain
    /// [`Self::push_dense`] and ignores `residuals`). Returns each new version and the bytes sent.
    pub async fn push_dense_encoded(
        &self,
        grads: &[(&str, &[f32], u64)],
        encoding: Compression,
        residuals: &mut [Vec<f32>],
    ) -> Result<(Vec<DensePushed>, u64), ClientError> {
        if encoding == Compression::None {
            let bytes = grads.iter().map(|g| codec::encoded_len(encoding, g.1.len()) as u64).sum();
            return Ok((self.push_dense(grads).await?, bytes));
        }
        if residuals.len() != grads.len() || grads.iter().zip(residuals.iter()).any(|(g, r)| g.1.len() != r.len()) {
            return Err(ClientError::InvalidArgument(
                "one residual of the gradient's length per dense gradient".into(),
            ));
        }
        let mut bytes_sent = 0u64;
        let requests: Vec<v1::DenseGradient> = grads
            .iter()
            .zip(residuals.iter_mut())
            .map(|((name, grad, version), residual)| {
                let encoded = codec::encode_with_residual(encoding, grad, residual);
                bytes_sent += encoded.len() as u64;
                v1::DenseGradient {
                    name: name.to_string(),
                    gradients: Bytes::from(encoded),
                    version: *version,
                    encoding: wire_encoding(encoding) as i32,
                }
            })
            .collect();
        Ok((self.send_dense(requests).await?, bytes_sent))
    }

    /// Dense vectors and their versions, in the order of `names`.
    pub async fn pull_dense(&self, names: &[&str]) -> Result<Vec<(Vec<f32>, u64)>, ClientError> {
        let (positions, requests): (Vec<_>, Vec<_>) =
            by_server(names.iter().map(|name| (self.map.server_of_name(name), name.to_string())))
                .map(|(server, (positions, names))| (positions, (server, v1::PullDenseRequest { names })))
                .unzip();
        let replies =
            self.call_each(requests, |mut client, request| async move { client.pull_dense(request).await }).await?;
        let mut out = vec![(Vec::new(), 0); names.len()];
        for (positions, (server, reply)) in positions.into_iter().zip(replies) {
            if reply.tables.len() != positions.len() {
                let reason = format!("{} tables in the reply to a pull of {}", reply.tables.len(), positions.len());
                return Err(self.protocol(server, reason));
            }
            for (position, table) in positions.into_iter().zip(reply.tables) {
                let mut values = vec![0f32; table.values.len() / 4];
                read_f32s_le(&table.values, &mut values);
                out[position] = (values, table.version);
            }
        }
        Ok(out)
    }

    /// Applies dense gradients `(table, gradient, version read)`; returns each new version.
    pub async fn push_dense(&self, grads: &[(&str, &[f32], u64)]) -> Result<Vec<DensePushed>, ClientError> {
        let requests = grads
            .iter()
            .map(|(name, grad, version)| v1::DenseGradient {
                name: name.to_string(),
                gradients: f32s_le(grad),
                version: *version,
                encoding: v1::GradientEncoding::F32 as i32,
            })
            .collect();
        self.send_dense(requests).await
    }

    /// Sends the dense gradients to the servers owning their tables, one request per server
    /// with all of its tables, the servers concurrently (with retries); returns each table's new
    /// version and the gradient's staleness, in order.
    async fn send_dense(&self, gradients: Vec<v1::DenseGradient>) -> Result<Vec<DensePushed>, ClientError> {
        let count = gradients.len();
        let (positions, requests): (Vec<_>, Vec<_>) =
            by_server(gradients.into_iter().map(|g| (self.map.server_of_name(&g.name), g)))
                .map(|(server, (positions, gradients))| (positions, (server, v1::PushDenseRequest { gradients })))
                .unzip();
        let replies =
            self.call_each(requests, |mut client, request| async move { client.push_dense(request).await }).await?;
        let mut out = vec![DensePushed { version: 0, staleness: 0 }; count];
        for (positions, (server, reply)) in positions.into_iter().zip(replies) {
            if reply.versions.len() != positions.len() || reply.staleness.len() != positions.len() {
                let reason = format!("{} versions in the reply to a push of {}", reply.versions.len(), positions.len());
                return Err(self.protocol(server, reason));
            }
            for ((position, version), staleness) in positions.into_iter().zip(reply.versions).zip(reply.staleness) {
                out[position] = DensePushed { version, staleness };
            }
        }
        Ok(out)
    }
}

/// Groups `(server, item)` pairs by server, keeping each item's position in the input:
/// server -> (positions, items), servers in ascending order.
fn by_server<T>(items: impl IntoIterator<Item = (usize, T)>) -> impl Iterator<Item = (usize, (Vec<usize>, Vec<T>))> {
    let mut groups: std::collections::BTreeMap<usize, (Vec<usize>, Vec<T>)> = std::collections::BTreeMap::new();
    for (position, (server, item)) in items.into_iter().enumerate() {
        let group = groups.entry(server).or_default();
        group.0.push(position);
        group.1.push(item);
    }
    groups.into_iter()
}
