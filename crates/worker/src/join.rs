//! The label join: prediction logs (what serving saw) joined with click events by request id, as
//! labelled rows that a `follow` source trains on, so training sees what serving saw.
//!
//! A prediction stays open for `window_ms` of event time: a click for it makes it a positive; the
//! window's end makes it a negative. Event time advances with the prediction logs (the newest
//! prediction's time) once the click events up to there are read (the runner reads the two
//! streams in step, file N of each). Rows leave in prediction-time order.
//!
//! Memory is bounded: at most `max_open` predictions wait; past that the oldest is closed early
//! (a negative unless already clicked) and counted as `overflowed`, never silently dropped. A
//! click for a request that is not open (unknown, or already closed) is counted as `unmatched`.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

pub mod run;

/// One logged prediction.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Prediction {
    /// The request's id.
    pub request_id: String,
    /// When it was served, Unix ms.
    pub time_ms: u64,
    /// The features as received: the raw cells of the model's input format, tab-separated.
    pub features: String,
}

/// One click (label) event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Click {
    /// The request it is for.
    pub request_id: String,
    /// When, Unix ms.
    pub time_ms: u64,
}

/// What the join has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JoinStats {
    /// Rows written: positives and negatives.
    pub positives: u64,
    /// See `positives`.
    pub negatives: u64,
    /// Predictions closed early because `max_open` were waiting.
    pub overflowed: u64,
    /// Clicks for no open prediction.
    pub unmatched: u64,
    /// Lines that did not parse (skipped, counted).
    pub bad_lines: u64,
}

struct Open {
    time_ms: u64,
    features: String,
    clicked: bool,
}

/// The join's state: open predictions by id and in time order.
pub struct Joiner {
    window_ms: u64,
    max_open: usize,
    open: HashMap<String, Open>,
    /// (time, arrival) -> id: the oldest first.
    order: BTreeMap<(u64, u64), String>,
    arrivals: u64,
    /// The newest prediction's time.
    newest_ms: u64,
    stats: JoinStats,
}

impl Joiner {
    /// A join with windows of `window_ms` holding at most `max_open` predictions.
    pub fn new(window_ms: u64, max_open: usize) -> Self {
        Self {
            window_ms,
            max_open: max_open.max(1),
            open: HashMap::new(),
            order: BTreeMap::new(),
            arrivals: 0,
            newest_ms: 0,
            stats: JoinStats::default(),
        }
    }

    /// Figures so far.
    pub fn stats(&self) -> JoinStats {
        self.stats
    }

    /// Predictions waiting.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Opens a prediction; closes the oldest into `out` when more than `max_open` wait. A
    /// request id seen twice keeps its first prediction.
    pub fn predict(&mut self, p: Prediction, out: &mut Vec<String>) {
        if self.open.contains_key(&p.request_id) {
            return;
        }
        self.newest_ms = self.newest_ms.max(p.time_ms);
        self.order.insert((p.time_ms, self.arrivals), p.request_id.clone());
        self.arrivals += 1;
        self.open.insert(p.request_id, Open { time_ms: p.time_ms, features: p.features, clicked: false });
        while self.open.len() > self.max_open {
            self.stats.overflowed += 1;
            self.close_oldest(out);
        }
    }

    /// Marks a prediction clicked (a positive once its window closes).
    pub fn click(&mut self, c: &Click) {
        match self.open.get_mut(&c.request_id) {
            Some(open) if c.time_ms <= open.time_ms + self.window_ms => open.clicked = true,
            _ => self.stats.unmatched += 1,
        }
    }

    /// Counts a line that did not parse.
    pub fn bad_line(&mut self) {
        self.stats.bad_lines += 1;
    }

    /// Closes, into `out`, every prediction whose window ended by the newest prediction's time.
    pub fn advance(&mut self, out: &mut Vec<String>) {
        while let Some((&(time_ms, _), _)) = self.order.first_key_value() {
            if time_ms + self.window_ms > self.newest_ms {
                break;
            }
            self.close_oldest(out);
        }
    }

    /// Closes every open prediction into `out` (the end of a finite stream).
    pub fn flush(&mut self, out: &mut Vec<String>) {
        while !self.order.is_empty() {
            self.close_oldest(out);
        }
    }

    fn close_oldest(&mut self, out: &mut Vec<String>) {
        let Some((_, id)) = self.order.pop_first() else { return };
        let Some(open) = self.open.remove(&id) else { return };
        if open.clicked {
            self.stats.positives += 1;
        } else {
            self.stats.negatives += 1;
        }
        out.push(format!("{}\t{}\n", u8::from(open.clicked), open.features));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, time_ms: u64) -> Prediction {
        Prediction { request_id: id.into(), time_ms, features: format!("f-{id}") }
    }

    fn c(id: &str, time_ms: u64) -> Click {
        Click { request_id: id.into(), time_ms }
    }

    #[test]
    fn a_click_within_the_window_is_a_positive_and_the_window_end_a_negative() {
        let (mut j, mut out) = (Joiner::new(100, 10), Vec::new());
        j.predict(p("a", 0), &mut out);
        j.predict(p("b", 50), &mut out);
        j.click(&c("a", 80));
        j.click(&c("b", 200)); // after b's window: too late
        j.click(&c("zz", 10));
        j.advance(&mut out);
        assert!(out.is_empty(), "nothing closes before a newer prediction passes the window");
        j.predict(p("c", 120), &mut out);
        j.advance(&mut out);
        assert_eq!(out, vec!["1\tf-a\n".to_string()], "a's window ended at 100 <= 120; b's at 150 has not");
        j.predict(p("d", 400), &mut out);
        j.advance(&mut out);
        assert_eq!(&out[1..], ["0\tf-b\n".to_string(), "0\tf-c\n".to_string()]);
        j.flush(&mut out);
        assert_eq!(out.last().map(String::as_str), Some("0\tf-d\n"));
        let s = j.stats();
        assert_eq!((s.positives, s.negatives, s.unmatched, s.overflowed), (1, 3, 2, 0));
    }

    #[test]
    fn past_max_open_the_oldest_closes_early_and_is_counted() {
        let (mut j, mut out) = (Joiner::new(1_000, 2), Vec::new());
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            j.predict(p(id, i as u64), &mut out);
        }
        j.click(&c("a", 5));
        assert_eq!((j.open(), out.clone()), (2, vec!["0\tf-a\n".to_string()]));
        assert_eq!((j.stats().overflowed, j.stats().unmatched), (1, 1), "a closed early; its late click is counted");
    }
}
