//! The parameter-server client.
//!
//! A batch is split per owning server, the parts are sent concurrently, and rows are written back
//! into request order. With one server the split is skipped entirely. Versions are per server (each
//! server's table has its own clock), so a pull returns a [`Clock`] with one version per server and
//! a push hands each server the version it read from that server.

use bytes::Bytes;
use ember_core::codec::{self, read_f32s_le, Compression};
use ember_core::{TableKind, TableSpec};
use ember_proto::http2;
use ember_proto::v1::{self, parameter_server_client::ParameterServerClient};
use futures_util::future::try_join_all;

use crate::{ClientError, Credentials, ShardMap, Transport};

mod retry;
mod whole;

mod dense;
mod tables;

pub use dense::DensePushed;
pub use retry::RetryPolicy;
pub use tables::TableGradients;

/// Largest message the client sends or accepts.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// One table version per server, as read by a pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clock(pub Vec<u64>);

impl Clock {
    fn of(&self, server: usize) -> u64 {
        self.0.get(server).copied().unwrap_or(0)
    }
}

/// Rows returned by a pull or lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct PulledRows {
    /// Values per row.
    pub dim: usize,
    /// `keys.len() * dim` values, in the order the keys were given.
    pub values: Vec<f32>,
    /// The table version each server read at.
    pub clock: Clock,
    /// Lookup only: true where a server had no row for the key.
    pub missing: Vec<bool>,
}

/// The outcome of a push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushResult {
    /// Distinct rows updated over all servers.
    pub rows_updated: u64,
    /// Each server's table version after the push (0 for servers not involved).
    pub clock: Clock,
    /// The staleness each server involved measured for its part.
    pub staleness: Vec<u64>,
}

impl PushResult {
    /// Adds one server's reply to a push.
    fn merge(&mut self, server: usize, reply: &v1::PushResponse) {
        self.rows_updated += reply.rows_updated;
        self.clock.0[server] = reply.version;
        self.staleness.push(reply.staleness);
    }
}

/// The keys of a batch that one server owns, and where they sit in the batch.
struct Part {
    server: usize,
    keys: Vec<u64>,
    /// Batch positions of `keys`; empty means "the whole batch, in order".
    positions: Vec<u32>,
}

impl Part {
    /// This part's rows of `values` (`dim` per batch key) as LE f32 bytes.
    fn gather(&self, values: &[f32], dim: usize) -> Bytes {
        if self.positions.is_empty() {
            return f32s_le(values);
        }
        let mut buf = Vec::with_capacity(self.keys.len() * dim * 4);
        for pos in &self.positions {
            let pos = *pos as usize;
            buf.extend_from_slice(bytemuck::cast_slice(&values[pos * dim..(pos + 1) * dim]));
        }
        Bytes::from(buf)
    }
}

/// A client of every ps-server in a shard map.
#[derive(Debug, Clone)]
pub struct PsClient {
    map: ShardMap,
    servers: Vec<ParameterServerClient<Transport>>,
    retry: RetryPolicy,
}

fn f32s_le(values: &[f32]) -> Bytes {
    Bytes::copy_from_slice(bytemuck::cast_slice(values))
}

impl PsClient {
    /// Connects to every server of `map` with `credentials`.
    pub async fn connect(map: ShardMap, credentials: &Credentials) -> Result<Self, ClientError> {
        let mut servers = Vec::with_capacity(map.endpoints().len());
        for endpoint in map.endpoints() {
            let connect_err = |source| ClientError::Connect { endpoint: endpoint.clone(), source };
            let channel = credentials
                .endpoint(endpoint)?
                .initial_stream_window_size(http2::STREAM_WINDOW)
                .initial_connection_window_size(http2::CONNECTION_WINDOW)
                .max_frame_size(http2::MAX_FRAME)
                .connect()
                .await
                .map_err(connect_err)?;
            servers.push(
                ParameterServerClient::new(credentials.wrap(channel))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        }
        Ok(Self { map, servers, retry: RetryPolicy::NONE })
    }

    /// Retries pulls, lookups and pushes per server under `retry` (each server's part of a
    /// batch separately, so a healthy server never sees a push twice because another failed).
    /// A push the server applied but whose answer was lost is applied again when retried: for
    /// asynchronous SGD that is one extra stale gradient, accepted here to survive restarts.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Connects to a single server owning every slot, without credentials (tests and tools
    /// against an open server).
    pub async fn connect_one(endpoint: impl Into<String>) -> Result<Self, ClientError> {
        Self::connect(ShardMap::single(endpoint), &Credentials::none()).await
    }

    /// The shard map in use.
    pub fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// The servers' addresses, in shard-map order.
    pub fn endpoints(&self) -> &[String] {
        self.map.endpoints()
    }

    fn rpc_err(&self, server: usize) -> impl Fn(tonic::Status) -> ClientError + '_ {
        move |status| ClientError::Rpc { endpoint: self.map.endpoints()[server].clone(), status }
    }

    /// A reply from `server` that breaks the contract (wrong sizes or counts).
    fn protocol(&self, server: usize, reason: String) -> ClientError {
        ClientError::Protocol { endpoint: self.map.endpoints()[server].clone(), reason }
    }

    /// Sends each `(server, request)` with `rpc`, all concurrently, each retried as
    /// [`Self::retrying`] does; the replies come back in request order, with their server.
    async fn call_each<Req, Resp, F, Fut>(
        &self,
        requests: Vec<(usize, Req)>,
        rpc: F,
    ) -> Result<Vec<(usize, Resp)>, ClientError>
    where
        Req: Clone,
        F: Fn(ParameterServerClient<Transport>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let rpc = &rpc;
        let calls = requests.into_iter().map(|(server, request)| async move {
            let client = &self.servers[server];
            let reply = self.retrying(server, || rpc(client.clone(), request.clone())).await?;
            Ok::<_, ClientError>((server, reply.into_inner()))
        });
        try_join_all(calls).await
    }

    fn split(&self, keys: &[u64]) -> Vec<Part> {
        if self.servers.len() == 1 {
            return vec![Part { server: 0, keys: keys.to_vec(), positions: Vec::new() }];
        }
        let mut parts: Vec<Part> =
            (0..self.servers.len()).map(|server| Part { server, keys: Vec::new(), positions: Vec::new() }).collect();
        for (i, key) in keys.iter().enumerate() {
            let part = &mut parts[self.map.server_of(*key)];
            part.keys.push(*key);
            part.positions.push(i as u32);
        }
        parts.retain(|p| !p.keys.is_empty());
        parts
    }

    /// Creates a table: a sparse one on every server, a dense one on the server that owns its
    /// name. Returns true if any server created it (false: it already existed everywhere).
    pub async fn create_table(&self, spec: &TableSpec, initial: Option<&[f32]>) -> Result<bool, ClientError> {
        let targets: Vec<usize> = match spec.kind {
            TableKind::Sparse => (0..self.servers.len()).collect(),
            TableKind::Dense => vec![self.map.server_of_name(&spec.name)],
        };
        let calls =
            targets.into_iter().map(|server| {
                let mut client = self.servers[server].clone();
                let request = v1::CreateTableRequest {
                    spec: Some(spec.clone().into()),
                    initial_values: initial.map(f32s_le).unwrap_or_default(),
                };
                async move {
                    client.create_table(request).await.map(|r| r.into_inner().created).map_err(self.rpc_err(server))
                }
            });
        Ok(try_join_all(calls).await?.into_iter().any(|created| created))
    }

    /// Drops a table on every server that has it.
    pub async fn drop_table(&self, name: &str) -> Result<(), ClientError> {
        let mut found = false;
        for (server, client) in self.servers.iter().enumerate() {
            match client.clone().drop_table(v1::DropTableRequest { table: name.to_string() }).await {
                Ok(_) => found = true,
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(self.rpc_err(server)(status)),
            }
        }
        if found {
            Ok(())
        } else {
            Err(self.rpc_err(0)(tonic::Status::not_found(format!("table {name:?} not found"))))
        }
    }

    /// Specs of the tables on the first server (sparse tables exist on all).
    pub async fn list_tables(&self) -> Result<Vec<v1::TableSpec>, ClientError> {
        let reply = self.servers[0].clone().list_tables(v1::ListTablesRequest {}).await.map_err(self.rpc_err(0))?;
        Ok(reply.into_inner().tables)
    }

    /// Training read: missing rows are created on their servers.
    pub async fn pull(&self, table: &str, keys: &[u64]) -> Result<PulledRows, ClientError> {
        self.read(table, keys, false).await
    }

    /// Read-only read: nothing is created; `missing` flags keys no server had.
    pub async fn lookup(&self, table: &str, keys: &[u64]) -> Result<PulledRows, ClientError> {
        self.read(table, keys, true).await
    }

    async fn read(&self, table: &str, keys: &[u64], lookup: bool) -> Result<PulledRows, ClientError> {
        let parts = self.split(keys);
        let calls = parts.iter().map(|part| {
            let client = &self.servers[part.server];
            self.retrying(part.server, move || {
                let mut client = client.clone();
                let (table, keys) = (table.to_string(), part.keys.clone());
                async move {
                    if lookup {
                        let r = client.lookup(v1::LookupRequest { table, keys }).await?.into_inner();
                        Ok((r.dim, r.values, r.version, r.missing))
                    } else {
                        let r = client.pull(v1::PullRequest { table, keys }).await?.into_inner();
                        Ok((r.dim, r.values, r.version, Vec::new()))
                    }
                }
            })
        });
        let replies = try_join_all(calls).await?;
        self.assemble(keys.len(), &parts, replies, lookup)
    }

    /// Puts each server's rows of a read back in batch order. `replies` are (dim, values,
    /// version, missing flags) per part of `parts`, in order.
    fn assemble(
        &self,
        keys: usize,
        parts: &[Part],
        replies: Vec<(u32, Bytes, u64, Vec<bool>)>,
        lookup: bool,
    ) -> Result<PulledRows, ClientError> {
        let dim = replies.first().map_or(0, |r| r.0 as usize);
        let mut values = vec![0f32; keys * dim];
        let mut missing = if lookup { vec![false; keys] } else { Vec::new() };
        let mut clock = Clock(vec![0; self.servers.len()]);
        for (part, (part_dim, bytes, version, part_missing)) in parts.iter().zip(replies) {
            let protocol = |reason: String| self.protocol(part.server, reason);
            if part_dim as usize != dim || bytes.len() != part.keys.len() * dim * 4 {
                return Err(protocol(format!(
                    "{} value bytes at dim {part_dim} for {} keys (dim {dim} elsewhere)",
                    bytes.len(),
                    part.keys.len()
                )));
            }
            if lookup && part_missing.len() != part.keys.len() {
                return Err(protocol(format!("{} missing flags for {} keys", part_missing.len(), part.keys.len())));
            }
            clock.0[part.server] = version;
            if part.positions.is_empty() {
                read_f32s_le(&bytes, &mut values);
                if lookup {
                    missing = part_missing;
                }
                continue;
            }
            for (j, pos) in part.positions.iter().enumerate() {
                let pos = *pos as usize;
                read_f32s_le(&bytes[j * dim * 4..(j + 1) * dim * 4], &mut values[pos * dim..(pos + 1) * dim]);
                if lookup {
                    missing[pos] = part_missing[j];
                }
            }
        }
        Ok(PulledRows { dim, values, clock, missing })
    }

    /// Pushes sparse gradients (`keys.len() * dim` values, key order), each server's part tagged
    /// with the version that server reported in `clock`.
    pub async fn push(
        &self,
        table: &str,
        keys: &[u64],
        grads: &[f32],
        clock: &Clock,
    ) -> Result<PushResult, ClientError> {
        if keys.is_empty() {
            return Ok(self.no_push());
        }
        if !grads.len().is_multiple_of(keys.len()) {
            return Err(ClientError::InvalidArgument(format!(
                "{} gradient values is not a multiple of {} keys",
                grads.len(),
                keys.len()
            )));
        }
        let dim = grads.len() / keys.len();
        let requests = self.split(keys).into_iter().map(|part| {
            let gradients = part.gather(grads, dim);
            let request = v1::PushRequest {
                table: table.to_string(),
                keys: part.keys,
                gradients,
                version: clock.of(part.server),
                encoding: v1::GradientEncoding::F32 as i32,
            };
            (part.server, request)
        });
        self.send_pushes(requests.collect()).await
    }

    /// Sends one push per server concurrently (with retries) and merges the replies.
    async fn send_pushes(&self, requests: Vec<(usize, v1::PushRequest)>) -> Result<PushResult, ClientError> {
        let replies = self.call_each(requests, |mut client, request| async move { client.push(request).await }).await?;
        let mut result = self.no_push();
        for (server, reply) in replies {
            result.merge(server, &reply);
        }
        Ok(result)
    }

    /// The result of pushing nothing.
    fn no_push(&self) -> PushResult {
        PushResult { rows_updated: 0, clock: Clock(vec![0; self.servers.len()]), staleness: Vec::new() }
    }

    /// Pushes sparse gradients compressed with `encoding`. Each server's part is encoded on its
    /// own with error feedback: `residual` (`grads.len()` values, aligned with `grads`) is added
    /// before encoding and receives what the encoding lost. `Compression::None` is a plain
    /// [`Self::push`] and ignores `residual` (which may be empty). Returns the push result and
    /// the gradient bytes sent.
    pub async fn push_encoded(
        &self,
        table: &str,
        keys: &[u64],
        grads: &[f32],
        clock: &Clock,
        encoding: Compression,
        residual: &mut [f32],
    ) -> Result<(PushResult, u64), ClientError> {
        if encoding == Compression::None {
            let result = self.push(table, keys, grads, clock).await?;
            return Ok((result, codec::encoded_len(encoding, grads.len()) as u64));
        }
        if keys.is_empty() {
            return Ok((self.no_push(), 0));
        }
        if !grads.len().is_multiple_of(keys.len()) || residual.len() != grads.len() {
            return Err(ClientError::InvalidArgument(format!(
                "{} gradient values and {} residuals for {} keys",
                grads.len(),
                residual.len(),
                keys.len()
            )));
        }
        let dim = grads.len() / keys.len();
        let mut bytes_sent = 0u64;
        let mut requests = Vec::new();
        for part in self.split(keys) {
            let positions: Vec<usize> = if part.positions.is_empty() {
                (0..keys.len()).collect()
            } else {
                part.positions.iter().map(|p| *p as usize).collect()
            };
            let mut part_grads = Vec::with_capacity(positions.len() * dim);
            let mut part_residual = Vec::with_capacity(positions.len() * dim);
            for p in &positions {
                part_grads.extend_from_slice(&grads[p * dim..(p + 1) * dim]);
                part_residual.extend_from_slice(&residual[p * dim..(p + 1) * dim]);
            }
            let encoded = codec::encode_with_residual(encoding, &part_grads, &mut part_residual);
            for (j, p) in positions.iter().enumerate() {
                residual[p * dim..(p + 1) * dim].copy_from_slice(&part_residual[j * dim..(j + 1) * dim]);
            }
            bytes_sent += encoded.len() as u64;
            let request = v1::PushRequest {
                table: table.to_string(),
                keys: part.keys,
                gradients: Bytes::from(encoded),
                version: clock.of(part.server),
                encoding: wire_encoding(encoding) as i32,
            };
            requests.push((part.server, request));
        }
        Ok((self.send_pushes(requests).await?, bytes_sent))
    }

    /// Deletes rows on their servers; returns how many existed.
    pub async fn delete_keys(&self, table: &str, keys: &[u64]) -> Result<u64, ClientError> {
        let calls = self.split(keys).into_iter().map(|part| {
            let mut client = self.servers[part.server].clone();
            let request = v1::DeleteKeysRequest { table: table.to_string(), keys: part.keys };
            async move {
                client.delete_keys(request).await.map(|r| r.into_inner().deleted).map_err(self.rpc_err(part.server))
            }
        });
        Ok(try_join_all(calls).await?.into_iter().sum())
    }

    /// Each server's stats, indexed by server number.
    pub async fn stats(&self) -> Result<Vec<v1::StatsResponse>, ClientError> {
        let calls = self.servers.iter().enumerate().map(|(server, client)| {
            let mut client = client.clone();
            async move { client.stats(v1::StatsRequest {}).await.map(|r| r.into_inner()).map_err(self.rpc_err(server)) }
        });
        try_join_all(calls).await
    }

    /// Applies every server's softsync buffers (end of training); returns the tables that had
    /// gradients buffered.
    pub async fn flush_pending(&self) -> Result<u64, ClientError> {
        let calls = self.servers.iter().enumerate().map(|(server, client)| {
            let mut client = client.clone();
            async move {
                client
                    .flush_pending(v1::FlushPendingRequest {})
                    .await
                    .map(|r| r.into_inner().tables)
                    .map_err(self.rpc_err(server))
            }
        });
        Ok(try_join_all(calls).await?.into_iter().sum())
    }

    /// Reports a worker's SSP clock to the server keeping `request.group`'s clocks (the owner of
    /// the group's name) and returns its answer, waiting there if `wait_for` asks to.
    pub async fn worker_clock(&self, request: v1::WorkerClockRequest) -> Result<v1::WorkerClockResponse, ClientError> {
        let server = self.map.server_of_name(&request.group);
        let client = &self.servers[server];
        let reply = self
            .retrying(server, || {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.worker_clock(request).await }
            })
            .await?;
        Ok(reply.into_inner())
    }
}

/// The wire enum of a codec.
fn wire_encoding(encoding: Compression) -> v1::GradientEncoding {
    match encoding {
        Compression::None => v1::GradientEncoding::F32,
        Compression::Fp16 => v1::GradientEncoding::Fp16,
        Compression::Onebit => v1::GradientEncoding::Onebit,
    }
}
