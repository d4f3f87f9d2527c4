//! Embedded Redis: an in-process model of a Redis 7 server.
//!
//! The same `redis` crate calls and Lua scripts the service sends to a real
//! Redis run here against memory, deterministically, with time from the
//! injected [`Clock`](crate::ports::clock::Clock). The pieces:
//!
//! - [`engine`]: the keyspace (strings and hashes with expiry) and the
//!   command interpreter ([`Engine`], [`Reply`], [`Session`]);
//! - `lua`: EVAL/EVALSHA/SCRIPT with Redis' Lua 5.1 environment;
//! - [`conn`]: [`EmbeddedRedis`], a `redis::aio::ConnectionLike` over a
//!   shared engine, with fault injection for testing callers;
//! - [`shared`]: [`SharedEngine`], the engine as connections share it,
//!   where one that finds it busy leaves its request with the holder;
//! - [`resp`]: the RESP2 codec for serving the engine over a socket.
//!
//! The model assumes one database (db 0), RESP2, and no replicas; it never
//! reads the wall clock, spawns threads or uses unseeded randomness. What
//! it deliberately leaves out (lists, sets, sorted sets, pub/sub, WATCH,
//! cjson/cmsgpack/bit in Lua, ...) answers with the error Redis gives for
//! an unknown command, so a caller that starts relying on it fails loudly.

pub mod conn;
pub mod engine;
mod lua;
pub mod resp;
pub mod shared;

pub use conn::{EmbeddedRedis, FaultHook, FaultKind, shared_engine};
pub use engine::{
    ClientIds, Engine, Entry, HashFields, Keyspace, Reply, Session, Value, glob_match,
};
pub use resp::{RespError, encode_command, encode_reply, parse_command};
pub use shared::{EngineGuard, SharedEngine};
