//! What a worker may report for an item: figures its range can hold, nothing that is not a
//! number. A report that fails is refused whole (InvalidArgument) and the item stays as it was,
//! so a buggy or spoofed worker cannot put 10^15 rows or a loss of -1e30 into a job.

use super::{Item, ItemReport, Phase};

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
    match item.range.phase {
        Phase::Train if !(report.probs.is_empty() && report.labels.is_empty()) => {
            return Err("a train item reports no predictions".into());
        }
        Phase::Test if report.error.is_none() => {
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
        _ => {}
    }
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
