//! What a worker may report for an item: figures its range can hold, nothing that is not a
//! number. A report that fails is refused whole (InvalidArgument) and the item stays as it was,
//! so a buggy or spoofed worker cannot put 10^15 rows or a loss of -1e30 into a job.

use super::job::Item;
use crate::plan::Phase;
use crate::report::{ItemReport, ItemStats};

/// Bad-line samples kept per report, and characters per sample.
const MAX_SAMPLES: usize = 5;
const MAX_SAMPLE_CHARS: usize = 512;

/// Checks `report` for `item` held by `member`; trims over-long samples.
pub(super) fn check(item: &Item, member: &str, report: &mut ItemReport) -> Result<(), String> {
    if let Some(holder) = &item.holder {
        if holder != member {
            return Err(format!("item {} is held by another worker", item.id));
        }
    }
    let lines = report.rows.checked_add(report.bad_lines).ok_or("rows + bad_lines overflows")?;
    if lines > item.range.rows {
        return Err(format!(
            "{} rows + {} bad lines reported for an item of {} lines",
            report.rows, report.bad_lines, item.range.rows
        ));
    }
    if !(report.loss_sum.is_finite() && report.loss_sum >= 0.0) {
        return Err(format!("loss_sum {} is not a finite, non-negative number", report.loss_sum));
    }
    // Test items carry a prediction per row; train items their progressive ones, or none.
    let predicted = match item.range.phase {
        Phase::Test => report.error.is_none(),
        Phase::Train => !(report.probs.is_empty() && report.labels.is_empty()),
    };
    if predicted {
        if report.probs.len() as u64 != report.rows || report.labels.len() as u64 != report.rows {
            return Err(format!(
                "{} predictions and {} labels for {} rows",
                report.probs.len(),
                report.labels.len(),
                report.rows
            ));
        }
        if let Some(p) = report.probs.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            return Err(format!("prediction {p} is not a probability"));
        }
        if let Some(y) = report.labels.iter().find(|y| **y != 0.0 && **y != 1.0) {
            return Err(format!("label {y} is not 0 or 1"));
        }
    }
    check_stats(&report.stats, report.rows, item.range.phase)?;
    report.bad_line_samples.truncate(MAX_SAMPLES);
    for s in &mut report.bad_line_samples {
        if let Some((cut, _)) = s.char_indices().nth(MAX_SAMPLE_CHARS) {
            s.truncate(cut);
        }
    }
    if let Some(e) = &mut report.error {
        if let Some((cut, _)) = e.char_indices().nth(4 * MAX_SAMPLE_CHARS) {
            e.truncate(cut);
        }
    }
    Ok(())
}

/// Figures a train item's rows can produce: windows covering at most its rows with finite
/// losses and AUCs in [0, 1], a bounded number of tables, finite clock waits. Test items carry
/// none.
fn check_stats(stats: &ItemStats, rows: u64, phase: Phase) -> Result<(), String> {
    if phase == Phase::Test && *stats != ItemStats::default() {
        return Err("a test item reports no training figures".into());
    }
    let window_rows = stats.windows.iter().try_fold(0u64, |sum, w| sum.checked_add(w.rows));
    if window_rows.is_none_or(|n| n > rows) {
        return Err(format!("windows of more rows than the item's {rows}"));
    }
    for w in &stats.windows {
        if !(w.loss_sum.is_finite() && w.loss_sum >= 0.0) || !(w.auc.is_nan() || (0.0..=1.0).contains(&w.auc)) {
            return Err(format!("window loss {} or AUC {} is out of range", w.loss_sum, w.auc));
        }
    }
    if stats.bytes_pushed_by_table.len() > 256 || stats.bytes_pushed_by_table.keys().any(|t| t.len() > 256) {
        return Err("at most 256 tables of names up to 256 bytes".into());
    }
    if stats.staleness.counts.len() > ember_core::sync::StalenessHistogram::EXACT + 1 {
        return Err("too many staleness buckets".into());
    }
    if !(stats.clock_wait_seconds.is_finite() && stats.clock_wait_seconds >= 0.0) {
        return Err(format!("clock wait {} is not a finite, non-negative number", stats.clock_wait_seconds));
    }
    Ok(())
}
