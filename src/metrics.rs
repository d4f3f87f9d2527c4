//! Counters the service keeps about itself.
//!
//! Plain atomics, so the core can count without knowing who reads: the
//! demo prints them, the daemon exports them. Names follow OpenIM's metrics
//! where OpenIM has one (`msg_insert_mongo_success_total`, …), counted
//! honestly (per message, not per batch, unless the name says record).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The service's counters.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
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
