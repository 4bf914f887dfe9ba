//! A tiered store's DRAM budget: what the hot tier holds, the background demotion that keeps it
//! under the budget, and the hard limit at which requests that add rows demote before they
//! return.

use crate::{tier, StoreError, Table};

/// How far past its DRAM budget a tiered store's hot tier may grow before requests that add rows
/// demote before they return (see `Store::relieve_pressure`).
pub const HOT_HARD_LIMIT: f64 = 1.25;

/// A demotion round, or a request's wait for the hot tier to shrink, this long is logged (a
/// bulk load's rounds take ~0.5 s each at 12M keys / 256 MiB; the stalls this is for took seconds).
const SLOW_PRESSURE_LOG: std::time::Duration = std::time::Duration::from_secs(1);

/// The share of every table's hot rows to demote to bring `hot` bytes down to 90% of `budget`.
fn demotion_fraction(hot: u64, budget: u64) -> f64 {
    let target = budget as f64 * 0.9;
    ((hot as f64 - target) / hot as f64).clamp(0.0, 1.0)
}

impl crate::Store {
    /// The DRAM budget, if the store is tiered.
    pub fn dram_budget(&self) -> Option<u64> {
        self.tiering.as_ref().map(|t| t.1)
    }

    /// Bytes the hot tier holds by the store's accounting: each sparse row's values, optimizer
    /// state, metadata and index slot, plus dense tables.
    pub fn hot_bytes(&self) -> u64 {
        self.all_tables()
            .iter()
            .map(|t| match t {
                Table::Sparse(s) => s.hot_rows() * s.row_bytes(),
                Table::Dense(d) => d.counters().2,
            })
            .sum()
    }

    /// If the hot tier is over the budget, demotes rows of every tiered table (the same fraction
    /// of each) until it is at 90% of it. Returns the rows demoted. Servers call this from a
    /// background thread; restores call it as they go.
    pub fn enforce_budget(&self) -> Result<u64, StoreError> {
        let Some((_, budget)) = &self.tiering else { return Ok(0) };
        if self.hot_bytes() <= *budget {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let _round = self.demotion_round.lock();
        let hot = self.hot_bytes();
        if hot <= *budget {
            return Ok(0);
        }
        let fraction = demotion_fraction(hot, *budget);
        let mut demoted = 0;
        for table in self.all_tables() {
            if let Table::Sparse(t) = table {
                // Not `demote`: holding the round while a checkpoint of one table holds its gate
                // would stop every other table's demotion too.
                demoted += t.demote_without_waiting(fraction)?;
            }
        }
        if started.elapsed() >= SLOW_PRESSURE_LOG {
            tracing::warn!(
                seconds = started.elapsed().as_secs_f64(),
                demoted,
                hot_bytes_before = hot,
                hot_bytes_after = self.hot_bytes(),
                budget = *budget,
                "slow demotion round"
            );
        }
        Ok(demoted)
    }

    /// DRAM the cold tier holds outside the budget, summed over tables: (index and filter
    /// blocks, write buffers) in bytes; zeros if the store is not tiered.
    pub fn cold_tier_memory(&self) -> Result<(u64, u64), StoreError> {
        let Some((cold, _)) = &self.tiering else { return Ok((0, 0)) };
        let mut sum = (0, 0);
        for table in self.all_tables() {
            if let Table::Sparse(t) = table {
                let (readers, memtables) = cold
                    .memory_bytes(&t.spec().name)
                    .map_err(|e| StoreError::Tier { table: t.spec().name.clone(), reason: e.0 })?;
                sum = (sum.0 + readers, sum.1 + memtables);
            }
        }
        Ok(sum)
    }

    /// The cold tier's owed flushes and compactions over every sparse table; zeros if the store is
    /// not tiered.
    pub fn cold_tier_backlog(&self) -> Result<tier::ColdBacklog, StoreError> {
        let Some((cold, _)) = &self.tiering else { return Ok(tier::ColdBacklog::default()) };
        let names: Vec<String> = self
            .all_tables()
            .into_iter()
            .filter_map(|t| match t {
                Table::Sparse(t) => Some(t.spec().name.clone()),
                Table::Dense(_) => None,
            })
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        cold.backlog(&names).map_err(|e| StoreError::Tier { table: names.join(","), reason: e.0 })
    }

    /// The hard limit of a tiered store: when rows are created or promoted faster than the
    /// background demotion moves them out (a bulk load, or the cold tier stalling its writes),
    /// the requests that grow the hot tier past `budget * HOT_HARD_LIMIT` demote before they
    /// return. This bounds the hot tier's peak, and with it the memory the allocator keeps
    /// afterwards, at the price of those requests' latency.
    ///
    /// While a checkpoint or export holds a table's tier gate, these requests do not wait for it
    /// (beyond 5 ms slices): they drop clean rows ([`SparseTable::drop_clean_rows`]), so a
    /// pull-heavy load stays near the limit and a push-heavy one may pass it until the
    /// checkpoint ends.
    pub(crate) fn relieve_pressure(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let result = self.relieve_pressure_inner();
        // The multi-second pull stalls seen after 50M-row bulk loads (docs/benchmarks.md) were
        // never traced; a request held here that long says so in the log.
        if started.elapsed() >= SLOW_PRESSURE_LOG {
            tracing::warn!(
                seconds = started.elapsed().as_secs_f64(),
                hot_bytes = self.hot_bytes(),
                "a request waited for the hot tier to shrink"
            );
        }
        result
    }

    fn relieve_pressure_inner(&self) -> Result<(), StoreError> {
        let Some((_, budget)) = &self.tiering else { return Ok(()) };
        let limit = *budget as f64 * HOT_HARD_LIMIT;
        // The hot bytes once more, after any wait: `None` if the pressure is gone.
        let fraction = || {
            let hot = self.hot_bytes();
            (hot as f64 > limit).then(|| demotion_fraction(hot, *budget))
        };
        if fraction().is_none() {
            return Ok(());
        }
        let sparse =
            || self.all_tables().into_iter().filter_map(|t| if let Table::Sparse(t) = t { Some(t) } else { None });
        loop {
            if let Some(_round) = self.demotion_round.try_lock_for(std::time::Duration::from_millis(5)) {
                let Some(fraction) = fraction() else { return Ok(()) };
                for t in sparse() {
                    t.demote_without_waiting(fraction)?;
                }
                return Ok(());
            }
            // While a checkpoint or export reads a table, a round may take a while (its gated
            // tables give only clean rows): drop clean rows of every table meanwhile (safe at any
            // time) rather than wait. Otherwise wait for the round; it is what frees memory.
            if sparse().any(|t| t.is_being_read()) {
                if let Some(fraction) = fraction() {
                    for t in sparse() {
                        t.drop_clean_rows(fraction)?;
                    }
                }
                return Ok(());
            }
        }
    }
}
