//! Per-table gauges (rows, bytes, tiers, feature policy), set from a stats snapshot by the
//! server's 5 s timer and by every `Stats` call.

use ember_store::TableStats;
use metrics::gauge;

/// Sets the per-table gauges from a stats snapshot.
pub fn record_table_gauges(stats: &[TableStats]) {
    for t in stats {
        gauge!("ember_ps_table_rows", "table" => t.spec.name.clone()).set(t.counters.rows as f64);
        gauge!("ember_ps_table_bytes", "table" => t.spec.name.clone()).set(t.counters.bytes as f64);
        let tier = &t.counters.tier;
        if tier.demoted > 0 || tier.cold_rows > 0 {
            for (what, value) in [
                ("hot_rows", t.counters.rows),
                ("cold_rows", tier.cold_rows),
                ("hot_hits", tier.hot_hits),
                ("cold_hits", tier.cold_hits),
                ("promoted", tier.promoted),
                ("demoted", tier.demoted),
            ] {
                gauge!("ember_ps_tier", "table" => t.spec.name.clone(), "what" => what).set(value as f64);
            }
        }
        if !t.spec.policy.is_off() {
            let c = &t.counters;
            for (what, value) in
                [("admitted", c.admitted), ("filtered", c.filtered), ("dropped", c.dropped), ("evicted", c.evicted)]
            {
                gauge!("ember_ps_feature_policy_rows", "table" => t.spec.name.clone(), "what" => what)
                    .set(value as f64);
            }
        }
    }
}
