//! Counters the service keeps about itself.
//!
//! Plain atomics, so the core can count without knowing who reads: the
//! demo prints them, the daemon exports them. Names follow OpenIM's metrics
//! where OpenIM has one (`msg_insert_mongo_success_total`, …), counted
//! honestly (per message, not per batch, unless the name says record).

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency histogram's buckets, in milliseconds (a
/// last, unbounded bucket follows).
pub const LATENCY_BOUNDS_MS: [u64; 20] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000,
    120_000, 300_000, 600_000, 1_800_000,
];

/// A latency histogram with fixed buckets ([`LATENCY_BOUNDS_MS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    sum_ms: AtomicU64,
}

impl Histogram {
    /// Records one observation of `ms` milliseconds (negative counts as 0:
    /// a sender's clock may run ahead of ours).
    pub fn observe_ms(&self, ms: i64) {
        let ms = ms.max(0) as u64;
        let i = LATENCY_BOUNDS_MS.partition_point(|b| *b < ms);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_ms: self.sum_ms.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a [`Histogram`] at one moment: per bucket (not
/// cumulative), the last bucket unbounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket.
    pub counts: Vec<u64>,
    /// Sum of all observations, ms.
    pub sum_ms: u64,
}

impl HistogramSnapshot {
    /// Observations in total.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was observed after `earlier` (same histogram).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum_ms: self.sum_ms.saturating_sub(earlier.sum_ms),
        }
    }

    /// The `q` quantile (0..=1) in ms, interpolated linearly inside its
    /// bucket as Prometheus' `histogram_quantile` does; `None` when empty.
    /// Observations in the unbounded bucket are reported at the last bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            if *c > 0 && (below + c) as f64 >= rank {
                let Some(hi) = LATENCY_BOUNDS_MS.get(i) else {
                    return LATENCY_BOUNDS_MS.last().map(|b| *b as f64);
                };
                let lo = if i == 0 { 0 } else { LATENCY_BOUNDS_MS[i - 1] };
                let within = (rank - below as f64) / *c as f64;
                return Some(lo as f64 + (hi - lo) as f64 * within);
            }
            below += c;
        }
        LATENCY_BOUNDS_MS.last().map(|b| *b as f64)
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The service's counters.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// End-to-end latency of persisted messages: from the message's
            /// `sendTime` to the acknowledgement of its Mongo write.
            pub e2e_latency: Histogram,
        }

        impl Metrics {
            /// Every counter with its name, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Input records read from `toRedis`.
    records_in,
    /// Input records read from `toMongo`.
    mongo_records_in,
    /// Messages decoded from `toRedis`.
    msgs_in,
    /// Stored messages given a seq (redeliveries included).
    msgs_stored,
    /// Stored messages whose seq came from the dedup table.
    dedup_hits,
    /// `toPush` records acknowledged.
    push_produced,
    /// `toMongo` records acknowledged.
    mongo_records_produced,
    /// Messages cached in Redis (`MSG_CACHE`) (OpenIM's name).
    msg_insert_redis_success_total,
    /// Failed attempts to run the Redis assign step (OpenIM's name).
    msg_insert_redis_failed_total,
    /// `toMongo` records written to Mongo (OpenIM's name).
    msg_insert_mongo_success_total,
    /// Failed attempts to write a `toMongo` record to Mongo (OpenIM's name).
    msg_insert_mongo_failed_total,
    /// Failed attempts to raise read seqs (OpenIM's name).
    seq_set_failed_total,
    /// Messages written into Mongo slots.
    msgs_persisted,
    /// Records sent to the dead-letter topic.
    dlq_records,
    /// Transient failures retried, all kinds.
    retries,
    /// Input offsets committed (commit calls that moved a partition).
    commits,
    /// New conversations announced.
    conversations_created,
    /// Conversation batches completed by the transfer stage.
    transfer_batches,
    /// Conversation batches completed by the persistence stage.
    persist_batches,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_their_bound_covers() {
        let h = Histogram::default();
        for ms in [0, 1, 2, 3, 7, 7, 1_000_000_000, -5] {
            h.observe_ms(ms);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 8);
        assert_eq!(s.counts[0], 3, "0, 1 and -5 are within 1 ms");
        assert_eq!(s.counts[1], 1, "2");
        assert_eq!(s.counts[2], 1, "3");
        assert_eq!(s.counts[3], 2, "7 twice");
        assert_eq!(s.counts[LATENCY_BOUNDS_MS.len()], 1, "unbounded");
        assert_eq!(s.sum_ms, 1 + 2 + 3 + 7 + 7 + 1_000_000_000);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::default();
        for _ in 0..50 {
            h.observe_ms(15); // (10, 20]
        }
        for _ in 0..50 {
            h.observe_ms(150); // (100, 200]
        }
        let s = h.snapshot();
        assert_eq!(s.quantile_ms(0.5), Some(20.0));
        assert_eq!(s.quantile_ms(0.25), Some(15.0));
        assert_eq!(s.quantile_ms(0.99), Some(198.0));
        assert_eq!(s.since(&s).count(), 0);
        assert_eq!(Histogram::default().snapshot().quantile_ms(0.5), None);
    }
}
