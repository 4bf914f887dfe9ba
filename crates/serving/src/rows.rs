//! A request's sparse rows: from the cache, else one read-only `Lookup` per table for the misses,
//! against embedding replicas ([`SparseSource::Replicas`], with backup requests; the training
//! servers then get no lookups at all) or, without replicas, the training ps-servers.
//!
//! Lookups never create rows; a key no server has reads as the initializer's value (the server
//! fills it) and is counted as a lookup miss. A lookup that fails or outlives the timeout either
//! fails the request with Unavailable or, when configured, reads every missed row as the
//! initializer's value (computed here from the table's spec), so a ps-server outage degrades
//! predictions instead of failing them. Either way nothing waits longer than the timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_client::{ClientError, PsClient, PulledRows, ReplicaSet};
use ember_core::TableSpec;
use metrics::counter;
use parking_lot::Mutex;

use crate::cache::TableCache;
use crate::{ServingConfig, ServingError};

/// What a failed or timed-out lookup does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupFailure {
    /// Fail the request with Unavailable.
    Fail,
    /// Use the initializer's values for the rows not cached.
    Initializer,
}

/// Where sparse rows are looked up.
#[derive(Debug, Clone)]
pub enum SparseSource {
    /// Read-only embedding replicas (`ember replica`).
    Replicas(ReplicaSet),
    /// The training ps-servers themselves (no replicas deployed).
    Ps(PsClient),
}

impl SparseSource {
    /// Rows of `keys`: the latest (`version` 0) or a published version's. The training servers
    /// hold only the latest rows, so they ignore `version`.
    async fn lookup(&self, table: &str, keys: &[u64], version: u64) -> Result<PulledRows, ClientError> {
        match self {
            SparseSource::Replicas(r) => r.lookup_at(table, keys, version).await,
            SparseSource::Ps(p) => p.lookup(table, keys).await,
        }
    }

    /// Whether rows can be read as of a published version (replicas) or only the latest.
    pub fn versioned(&self) -> bool {
        matches!(self, SparseSource::Replicas(_))
    }
}

impl From<PsClient> for SparseSource {
    fn from(client: PsClient) -> Self {
        SparseSource::Ps(client)
    }
}

impl From<ReplicaSet> for SparseSource {
    fn from(set: ReplicaSet) -> Self {
        SparseSource::Replicas(set)
    }
}

/// Rows of one table for one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRows {
    /// `keys.len() * dim` values in key order.
    pub values: Vec<f32>,
    /// Keys no server had a row for (their values are the initializer's).
    pub misses: u64,
    /// Keys served from the cache.
    pub cache_hits: u64,
}

/// Reads rows through the cache.
pub struct RowSource {
    source: SparseSource,
    /// By table and sparse version (0: latest).
    caches: Mutex<HashMap<(String, u64), Arc<TableCache>>>,
    ttl: Duration,
    max_rows: usize,
    timeout: Duration,
    on_failure: LookupFailure,
}

impl RowSource {
    /// Rows from `source`, cached and timed out as `config` says.
    pub fn new(source: SparseSource, config: &ServingConfig) -> Self {
        Self {
            source,
            caches: Mutex::new(HashMap::new()),
            ttl: config.cache_ttl,
            max_rows: config.cache_rows,
            timeout: config.lookup_timeout,
            on_failure: config.on_lookup_failure,
        }
    }

    /// Whether rows can be read as of a published version.
    pub fn versioned(&self) -> bool {
        self.source.versioned()
    }

    fn cache(&self, spec: &TableSpec, version: u64) -> Arc<TableCache> {
        let key = (spec.name.clone(), version);
        let mut caches = self.caches.lock();
        if version != 0 && !caches.contains_key(&key) {
            // A table's rows of versions no longer asked for are dead weight: a newer pinned
            // version drops the older ones (the latest rows' cache stays).
            let newest = caches.keys().filter(|(t, v)| *t == spec.name && *v != 0).map(|(_, v)| *v).max();
            if newest.is_some_and(|n| n < version) {
                caches.retain(|(t, v), _| *t != spec.name || *v == 0);
            }
        }
        let cache =
            caches.entry(key).or_insert_with(|| Arc::new(TableCache::new(spec.dim as usize, self.max_rows, self.ttl)));
        if cache.dim() != spec.dim as usize {
            // The table was recreated with another width: its cached rows mean nothing now.
            *cache = Arc::new(TableCache::new(spec.dim as usize, self.max_rows, self.ttl));
        }
        Arc::clone(cache)
    }

    /// The rows of distinct `keys` in table `spec`: the latest (`version` 0) or as published
    /// version `version` holds them.
    pub async fn rows(&self, spec: &TableSpec, keys: &[u64], version: u64) -> Result<TableRows, ServingError> {
        let dim = spec.dim as usize;
        let cache = self.cache(spec, version);
        let mut values = vec![0f32; keys.len() * dim];
        let missed = cache.get(keys, Instant::now(), &mut values);
        let cache_hits = (keys.len() - missed.len()) as u64;
        counter!("ember_serving_cache_total", "result" => "hit").increment(cache_hits);
        counter!("ember_serving_cache_total", "result" => "miss").increment(missed.len() as u64);
        if missed.is_empty() {
            return Ok(TableRows { values, misses: 0, cache_hits });
        }
        let miss_keys: Vec<u64> = missed.iter().map(|i| keys[*i]).collect();
        let read_at = Instant::now();
        let looked_up =
            match tokio::time::timeout(self.timeout, self.source.lookup(&spec.name, &miss_keys, version)).await {
                Ok(Ok(rows)) if rows.dim == dim => Ok(rows),
                Ok(Ok(rows)) => Err(format!("rows of dim {} for a table of dim {dim}", rows.dim)),
                Ok(Err(e)) if version != 0 && e.code() == Some(tonic::Code::NotFound) => {
                    return Err(ServingError::SparseNotReady(version));
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
        match looked_up {
            Ok(rows) => {
                for (j, i) in missed.iter().enumerate() {
                    values[i * dim..(i + 1) * dim].copy_from_slice(&rows.values[j * dim..(j + 1) * dim]);
                }
                cache.insert(&miss_keys, &rows.values, read_at);
                let misses = rows.missing.iter().filter(|m| **m).count() as u64;
                counter!("ember_serving_lookup_misses_total").increment(misses);
                Ok(TableRows { values, misses, cache_hits })
            }
            Err(reason) => match self.on_failure {
                LookupFailure::Fail => {
                    counter!("ember_serving_lookup_failures_total", "action" => "fail").increment(1);
                    Err(ServingError::Lookup { table: spec.name.clone(), reason })
                }
                LookupFailure::Initializer => {
                    counter!("ember_serving_lookup_failures_total", "action" => "initializer").increment(1);
                    tracing::warn!(table = %spec.name, %reason, "lookup failed; using initializer values");
                    for i in &missed {
                        spec.fill_weights(keys[*i], &mut values[i * dim..(i + 1) * dim]);
                    }
                    Ok(TableRows { values, misses: missed.len() as u64, cache_hits })
                }
            },
        }
    }
}
