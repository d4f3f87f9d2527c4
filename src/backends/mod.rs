//! Adapters of the ports over the real backends (the production build).
//!
//! - [`kafka`]: the log ports over Apache Kafka (rdkafka).
//! - [`mongo`]: the document store over MongoDB (and FerretDB v1).
//! - [`redis`]: the daemon's Redis connection per `redisMode` (standalone,
//!   or the primary Sentinel names). The service's Redis code itself is
//!   written against `redis::aio::ConnectionLike` and needs no adapter.

pub mod kafka;
pub mod mongo;
pub mod redis;
