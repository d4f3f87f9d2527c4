//! msgtransfer: a Rust MsgTransfer for OpenIM.
//!
//! It consumes chat messages from Kafka (`toRedis`), gives every stored
//! message a per-conversation seq through Redis, caches it in Redis, forwards
//! it to the push topic (`toPush`) and the persistence topic (`toMongo`), and
//! writes it to MongoDB — wire-compatible with OpenIM's Go service, without
//! its losses and duplicates.
//!
//! # Layout
//! - [`proto`]: protobuf types generated from `proto/` (OpenIM's field numbers).
//! - [`domain`]: pure rules — conversation IDs, options, categorisation, read
//!   receipts, buckets, the cache JSON and the Mongo model. No IO.
//! - [`ports`]: the deterministic IO seam — traits for the log, the document
//!   store, the new-conversation hook, the clock and the RNG.
//! - [`backends`]: adapters of the ports over real MongoDB (Redis needs
//!   none: the `redis` crate's connections implement `ConnectionLike`).
//! - [`cache`]: the Redis side (dedup, seq allocation, message cache, read
//!   seqs) written against `redis::aio::ConnectionLike`.
//! - [`pipeline`]: the consumers — ordering, per-conversation batching,
//!   offset tracking, retries, dead letters, drain.
//! - [`embedded`]: in-process backends (log, Redis, store, hook) for the
//!   zero-setup demo and fast deterministic tests.
//! - [`check`]: the history checker shared by the demo, the simulator and
//!   `audit`.
//! - [`config`]: the daemon's configuration, read from OpenIM's config folder.
//! - [`daemon`]: `msgtransfer run`, the service on real Kafka, Redis and
//!   MongoDB.
//! - [`demo`]: the zero-setup main job: traffic, service, audit.
//!
//! Nothing in `domain`, `pipeline`, `cache` or `check` reads the wall clock,
//! spawns threads, uses unseeded randomness or depends on hash iteration
//! order; `clippy.toml` enforces it.

#![warn(missing_docs)]

pub mod backends;
pub mod cache;
pub mod check;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod domain;
pub mod embedded;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod ports;
pub mod proto;
pub mod service;
