//! The replica client: read-only row lookups against embedding replicas (`ember.v1.Replica`),
//! where each slot is held by several replicas.
//!
//! A lookup's keys are split by replica group (the replicas that hold the same slots). Each part
//! goes to one replica of its group (rotating, replicas marked dead last); when that one has not
//! answered within the group's hedge delay ([`HedgePolicy`]: the recent p95, with a floor) a
//! backup request goes to the next one, and when an attempt fails the next starts at once. The
//! first answer wins and the others are dropped (which cancels their RPCs). A replica that fails
//! as unreachable or not ready is tried last for a while; one that refuses the request itself
//! (unknown table, bad input) fails the lookup, as every replica would refuse it.
//!
//! Which replica holds which slots, and whether it is ready, comes from each replica's `Status`,
//! asked at connect and then every `refresh` in the background, so a replica that comes (back)
//! up joins without a restart of the caller and a replica still catching up gets no traffic.
//!
//! Invariants: a caller never sees a partial result (one failed part fails the call); rows come
//! back in the order of the keys asked for.

mod hedge;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ember_core::codec::read_f32s_le;
use ember_core::slot_of;
use ember_proto::v1::{self, replica_client::ReplicaClient};
use futures_util::stream::{FuturesUnordered, StreamExt};
use parking_lot::{Mutex, RwLock};

pub use hedge::HedgePolicy;
use hedge::Window;

use crate::{ClientError, Credentials, PulledRows, Transport};

/// Largest message the client accepts.
const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// How long a replica that failed as unreachable is tried only after the others.
const DEAD_FOR: Duration = Duration::from_secs(1);

/// One part's answer: (dim, values, missing flags).
type PartRows = (usize, Vec<f32>, Vec<bool>);

/// Counts of a [`ReplicaSet`]'s lookups since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Parts sent (one per replica group a lookup touched).
    pub parts: u64,
    /// Backup requests sent because the first replica was slow.
    pub hedged: u64,
    /// Further attempts because a replica failed.
    pub retried: u64,
    /// Parts answered by a backup or retry rather than the first replica asked.
    pub backup_wins: u64,
    /// Parts every replica of the group failed.
    pub failed: u64,
}

#[derive(Debug)]
struct Member {
    endpoint: String,
    client: ReplicaClient<Transport>,
    dead_until: Mutex<Option<Instant>>,
}

impl Member {
    fn dead(&self, now: Instant) -> bool {
        self.dead_until.lock().is_some_and(|t| t > now)
    }
}

/// Replicas holding the same slots.
#[derive(Debug)]
struct Group {
    members: Vec<usize>,
    next: AtomicUsize,
    window: Arc<Window>,
}

/// Which group serves each slot.
#[derive(Debug, Default)]
struct Routing {
    num_slots: u32,
    groups: Vec<Group>,
    /// `group_of[slot]`: index into `groups`, or `u32::MAX` when no ready replica holds it.
    group_of: Vec<u32>,
}

#[derive(Debug)]
struct Inner {
    members: Vec<Member>,
    routing: RwLock<Arc<Routing>>,
    /// Latency windows by group membership, kept across routing rebuilds.
    windows: Mutex<Vec<(Vec<usize>, Arc<Window>)>>,
    policy: HedgePolicy,
    parts: AtomicU64,
    hedged: AtomicU64,
    retried: AtomicU64,
    backup_wins: AtomicU64,
    failed: AtomicU64,
}

/// A client of a set of replicas.
#[derive(Debug, Clone)]
pub struct ReplicaSet {
    inner: Arc<Inner>,
}

impl ReplicaSet {
    /// Connects (lazily) to every replica of `endpoints`, asks each what it holds, and keeps
    /// asking every `refresh`. Replicas down now are skipped until they answer.
    pub async fn connect(
        endpoints: &[String],
        credentials: &Credentials,
        policy: HedgePolicy,
        refresh: Duration,
    ) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::InvalidArgument("no replica addresses".into()));
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let channel = credentials.endpoint(endpoint)?.connect_timeout(Duration::from_secs(1)).connect_lazy();
            let client = ReplicaClient::new(credentials.wrap(channel))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            members.push(Member { endpoint: endpoint.clone(), client, dead_until: Mutex::new(None) });
        }
        let inner = Arc::new(Inner {
            members,
            routing: RwLock::default(),
            windows: Mutex::default(),
            policy,
            parts: AtomicU64::new(0),
            hedged: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            backup_wins: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        refresh_routing(&inner).await;
        tokio::spawn(keep_refreshing(Arc::downgrade(&inner), refresh));
        Ok(Self { inner })
    }

    /// Waits until every slot has a ready replica, or `timeout` passes (then says which slots
    /// have none).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            refresh_routing(&self.inner).await;
            let routing = Arc::clone(&self.inner.routing.read());
            let uncovered = routing.group_of.iter().filter(|g| **g == u32::MAX).count();
            if routing.num_slots > 0 && uncovered == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClientError::InvalidArgument(format!(
                    "replicas not ready after {timeout:?}: {uncovered} of {} slots have no ready replica",
                    routing.num_slots
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The replicas' addresses.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Counts since this set was made.
    pub fn stats(&self) -> ReplicaStats {
        let i = &self.inner;
        ReplicaStats {
            parts: i.parts.load(Ordering::Relaxed),
            hedged: i.hedged.load(Ordering::Relaxed),
            retried: i.retried.load(Ordering::Relaxed),
            backup_wins: i.backup_wins.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
        }
    }

    /// Rows of `keys` in `table` (`missing` flags keys no replica had a row for; their values
    /// are the table's initializer's).
    pub async fn lookup(&self, table: &str, keys: &[u64]) -> Result<PulledRows, ClientError> {
        self.lookup_at(table, keys, 0).await
    }

    /// [`Self::lookup`] of published model version `version`'s sparse state (0: the latest
    /// rows). A replica that does not hold the version yet answers NotFound and the next one of
    /// the group is asked; NotFound from all of them fails the lookup with NotFound.
    pub async fn lookup_at(&self, table: &str, keys: &[u64], version: u64) -> Result<PulledRows, ClientError> {
        let routing = Arc::clone(&self.inner.routing.read());
        if routing.num_slots == 0 {
            return Err(self.no_replica("no replica is ready"));
        }
        let mut parts: Vec<(usize, Vec<u64>, Vec<u32>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = slot_of(*key, routing.num_slots);
            let group = routing.group_of[slot as usize];
            if group == u32::MAX {
                return Err(self.no_replica(&format!("no ready replica holds slot {slot} (key {key})")));
            }
            match parts.iter_mut().find(|p| p.0 == group as usize) {
                Some(p) => {
                    p.1.push(*key);
                    p.2.push(i as u32);
                }
                None => parts.push((group as usize, vec![*key], vec![i as u32])),
            }
        }
        let calls =
            parts.iter().map(|(group, part_keys, _)| self.hedged(&routing.groups[*group], table, part_keys, version));
        let mut replies = futures_util::future::try_join_all(calls).await?;
        if parts.len() == 1 {
            // One group holds every key: its answer is already in key order.
            let (dim, values, missing) = replies.remove(0);
            return Ok(PulledRows { dim, values, clock: crate::Clock::default(), missing });
        }
        let dim = replies.first().map_or(0, |r| r.0);
        let mut values = vec![0f32; keys.len() * dim];
        let mut missing = vec![false; keys.len()];
        for ((_, _, positions), (part_dim, part_values, part_missing)) in parts.iter().zip(replies) {
            if part_dim != dim {
                return Err(self.protocol(format!("rows of dim {part_dim} and {dim} in one lookup")));
            }
            for (j, pos) in positions.iter().enumerate() {
                let pos = *pos as usize;
                values[pos * dim..(pos + 1) * dim].copy_from_slice(&part_values[j * dim..(j + 1) * dim]);
                missing[pos] = part_missing[j];
            }
        }
        Ok(PulledRows { dim, values, clock: crate::Clock::default(), missing })
    }

    /// One group's part: first replica, a backup after the hedge delay, the next at once after a
    /// failure; the first answer wins.
    async fn hedged(&self, group: &Group, table: &str, keys: &[u64], version: u64) -> Result<PartRows, ClientError> {
        let inner = &self.inner;
        inner.parts.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let order = self.order(group, started);
        let delay = group.window.delay(&inner.policy);
        let mut attempts = FuturesUnordered::new();
        let mut sent = 0usize;
        let mut last_err = None;
        attempts.push(self.attempt(order[0], table, keys, version));
        sent += 1;
        let hedge = tokio::time::sleep(delay);
        tokio::pin!(hedge);
        let mut hedge_armed = order.len() > 1;
        loop {
            tokio::select! {
                done = attempts.next() => {
                    let Some((member, result)) = done else {
                        inner.failed.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("ember_replica_client_failures_total").increment(1);
                        return Err(last_err.unwrap_or_else(|| self.no_replica("no replica answered")));
                    };
                    match result {
                        Ok(rows) => {
                            group.window.record(started.elapsed());
                            if member != order[0] {
                                inner.backup_wins.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("ember_replica_client_backup_wins_total").increment(1);
                            }
                            return Ok(rows);
                        }
                        Err(err) => {
                            // A replica may not hold a version yet that another one holds.
                            let not_yet = version != 0 && err.code() == Some(tonic::Code::NotFound);
                            let retry = not_yet || err.code().is_none_or(|c| matches!(c,
                                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                                | tonic::Code::DeadlineExceeded | tonic::Code::FailedPrecondition));
                            if !retry {
                                return Err(err);
                            }
                            if !not_yet {
                                *inner.members[member].dead_until.lock() = Some(Instant::now() + DEAD_FOR);
                            }
                            last_err = Some(err);
                            if sent < order.len() {
                                attempts.push(self.attempt(order[sent], table, keys, version));
                                sent += 1;
                                inner.retried.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("ember_replica_client_requests_total", "kind" => "retry").increment(1);
                            }
                        }
                    }
                }
                () = &mut hedge, if hedge_armed => {
                    hedge_armed = false;
                    if sent < order.len() {
                        attempts.push(self.attempt(order[sent], table, keys, version));
                        sent += 1;
                        inner.hedged.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("ember_replica_client_requests_total", "kind" => "backup").increment(1);
                    }
                }
            }
        }
    }

    /// The group's members in the order to ask them: rotating, dead ones last.
    fn order(&self, group: &Group, now: Instant) -> Vec<usize> {
        let n = group.members.len();
        let start = group.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<usize> = (0..n).map(|i| group.members[(start + i) % n]).collect();
        order.sort_by_key(|m| self.inner.members[*m].dead(now));
        order
    }

    /// One lookup RPC to `member`, checked.
    fn attempt(
        &self,
        member: usize,
        table: &str,
        keys: &[u64],
        version: u64,
    ) -> impl std::future::Future<Output = (usize, Result<PartRows, ClientError>)> + 'static {
        let m = &self.inner.members[member];
        let (mut client, endpoint) = (m.client.clone(), m.endpoint.clone());
        let request = v1::ReplicaLookupRequest { table: table.to_string(), keys: keys.to_vec(), version };
        let n = keys.len();
        metrics::counter!("ember_replica_client_requests_total", "kind" => "first").increment(1);
        async move {
            let result = match client.lookup(request).await {
                Ok(reply) => {
                    let r = reply.into_inner();
                    let dim = r.dim as usize;
                    if r.values.len() != n * dim * 4 || r.missing.len() != n {
                        let reason = format!(
                            "{} value bytes and {} flags for {n} keys of dim {dim}",
                            r.values.len(),
                            r.missing.len()
                        );
                        Err(ClientError::Protocol { endpoint, reason })
                    } else {
                        let mut values = vec![0f32; n * dim];
                        read_f32s_le(&r.values, &mut values);
                        Ok((dim, values, r.missing))
                    }
                }
                Err(status) => Err(ClientError::Rpc { endpoint, status }),
            };
            (member, result)
        }
    }

    fn no_replica(&self, reason: &str) -> ClientError {
        let endpoint = self.endpoints().join(",");
        ClientError::Rpc { endpoint, status: tonic::Status::unavailable(reason.to_string()) }
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol { endpoint: self.endpoints().join(","), reason }
    }
}

/// One replica's `Status`: what it holds, how far it has followed each training server, and the
/// published versions it holds.
pub async fn replica_status(
    endpoint: &str,
    credentials: &Credentials,
) -> Result<v1::ReplicaStatusResponse, ClientError> {
    let mut client = ReplicaClient::new(credentials.channel(endpoint).await?);
    let reply = client.status(v1::ReplicaStatusRequest {}).await;
    reply.map(tonic::Response::into_inner).map_err(|status| ClientError::Rpc { endpoint: endpoint.to_string(), status })
}

/// Asks every replica what it holds and rebuilds the routing from the ready ones.
async fn refresh_routing(inner: &Inner) {
    let asks = inner.members.iter().map(|m| {
        let mut client = m.client.clone();
        async move {
            let ask = client.status(v1::ReplicaStatusRequest {});
            match tokio::time::timeout(Duration::from_secs(1), ask).await {
                Ok(Ok(reply)) => Some(reply.into_inner()),
                _ => None,
            }
        }
    });
    let statuses = futures_util::future::join_all(asks).await;
    let num_slots = statuses.iter().flatten().find(|s| s.ready).map_or(0, |s| s.num_slots);
    let mut holders: Vec<Vec<usize>> = vec![Vec::new(); num_slots as usize];
    for (member, status) in statuses.iter().enumerate() {
        let Some(s) = status.as_ref().filter(|s| s.ready && s.num_slots == num_slots) else { continue };
        if s.slots.is_empty() {
            holders.iter_mut().for_each(|h| h.push(member));
        } else {
            for slot in s.slots.iter().filter(|slot| **slot < num_slots) {
                holders[*slot as usize].push(member);
            }
        }
    }
    let mut windows = inner.windows.lock();
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of = Vec::with_capacity(holders.len());
    for members in holders {
        if members.is_empty() {
            group_of.push(u32::MAX);
            continue;
        }
        let at = match groups.iter().position(|g| g.members == members) {
            Some(i) => i,
            None => {
                let window = match windows.iter().find(|(m, _)| *m == members) {
                    Some((_, w)) => Arc::clone(w),
                    None => {
                        let w = Arc::new(Window::default());
                        windows.push((members.clone(), Arc::clone(&w)));
                        w
                    }
                };
                groups.push(Group { members, next: AtomicUsize::new(0), window });
                groups.len() - 1
            }
        };
        group_of.push(at as u32);
    }
    drop(windows);
    *inner.routing.write() = Arc::new(Routing { num_slots, groups, group_of });
}

async fn keep_refreshing(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        refresh_routing(&inner).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
