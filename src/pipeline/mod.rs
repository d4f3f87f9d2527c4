//! The consumers: what happens between reading a record and committing it.
//!
//! - [`consumer`]: the loop shared by both topics — partition order,
//!   per-conversation queues, bounded concurrency, dead letters, commits of
//!   contiguous done offsets, drain.
//! - [`offsets`]: which offsets are committable.
//! - [`transfer`]: the `toRedis` handler (seq, cache, push, persistence
//!   records).
//! - [`persist`]: the `toMongo` handler (Mongo buckets).
//! - [`retry`]: bounded backoff.
//!
//! Nothing here reads the wall clock, spawns threads or draws unseeded
//! randomness: time, randomness and IO come in through `crate::ports`.

pub mod consumer;
pub mod offsets;
pub mod persist;
pub mod retry;
pub mod transfer;
