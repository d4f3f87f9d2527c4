//! Operator commands on the real backends: `load` puts OpenIM traffic into
//! `toRedis` and records what it sent; `audit` reads Kafka, Redis and
//! MongoDB back and checks them with the demo's checker.
//!
//! These are tools run next to the service, not the service: they may read
//! the wall clock (through [`SystemClock`](crate::ports::clock::SystemClock)).

pub mod audit;
pub mod dlq;
pub mod load;
pub mod metrics_text;

/// Where `load` writes its record and `audit` looks for it by default.
pub const DEFAULT_RECORD: &str = "msgtransfer-load.json";
