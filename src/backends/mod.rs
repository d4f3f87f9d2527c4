//! Adapters of the ports over the real backends (the production build).
//!
//! - [`kafka`]: the log ports over Apache Kafka (rdkafka).
//! - [`mongo`]: the document store over MongoDB (and FerretDB v1).
//!
//! Redis needs no adapter: the service's Redis code is written against
//! `redis::aio::ConnectionLike`, which the `redis` crate's own connections
//! implement.

pub mod kafka;
pub mod mongo;
