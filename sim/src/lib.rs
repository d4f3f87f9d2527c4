//! Deterministic simulation of msgtransfer.
//!
//! The service library runs unchanged on turmoil's simulated network,
//! against simulated Kafka, Redis and Mongo hosts ([`kafka`], [`redis`],
//! [`mongo`]) that inject faults; [`scenario`] draws a fault schedule from
//! a seed, runs a safety phase with faults and a liveness phase without,
//! and checks the recorded history with the same checker as `demo` and
//! `audit`. One `u64` seed drives everything, so any run replays exactly.

pub mod common;
pub mod kafka;
pub mod mongo;
pub mod redis;
pub mod rpc;
pub mod scenario;
pub mod shrink;
