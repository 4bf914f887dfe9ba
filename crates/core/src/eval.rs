//! Evaluation metrics: exact AUC (ties averaged, as sklearn's `roc_auc_score`) and logloss.

/// Clamp for probabilities inside logloss, so a confident wrong prediction costs ~34.5, not inf.
pub const PROB_EPS: f64 = 1e-15;

/// Mean binary cross-entropy of `probs` against 0/1 `labels`.
pub fn logloss(probs: &[f32], labels: &[f32]) -> f64 {
    if probs.is_empty() {
        return f64::NAN;
    }
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(p, y)| {
            let p = f64::from(*p).clamp(PROB_EPS, 1.0 - PROB_EPS);
            if *y > 0.5 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    total / probs.len() as f64
}

/// Exact area under the ROC curve via the rank-sum (Mann-Whitney U) statistic, tied scores
/// sharing their average rank. NaN when only one class is present.
pub fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let positives = labels.iter().filter(|y| **y > 0.5).count() as f64;
    let negatives = scores.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1..=j share their mean.
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        let pos_in_tie = order[i..j].iter().filter(|k| labels[**k] > 0.5).count() as f64;
        rank_sum_pos += mean_rank * pos_in_tie;
        i = j;
    }
    (rank_sum_pos - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Logistic function, numerically safe for large |x|.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_hand_counts_with_ties() {
        // Pairs (pos, neg): (0.8,0.1) win, (0.8,0.4) win, (0.4,0.1) win, (0.4,0.4) tie -> 3.5/4.
        assert!((auc(&[0.1, 0.4, 0.4, 0.8], &[0.0, 0.0, 1.0, 1.0]) - 0.875).abs() < 1e-12);
        assert_eq!(auc(&[0.9, 0.1], &[1.0, 0.0]), 1.0);
        assert_eq!(auc(&[0.9, 0.1], &[0.0, 1.0]), 0.0);
        assert_eq!(auc(&[0.5; 10], &[0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]), 0.5);
        assert!(auc(&[0.3, 0.2], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn logloss_and_sigmoid() {
        assert!((logloss(&[0.5, 0.5], &[1.0, 0.0]) - std::f64::consts::LN_2).abs() < 1e-9);
        assert!(logloss(&[0.0], &[1.0]) < 35.0, "clamped, not infinite");
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(-100.0) >= 0.0 && sigmoid(100.0) <= 1.0);
        assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() < 1e-6);
    }
}
