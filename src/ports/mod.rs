//! The deterministic IO seam.
//!
//! Everything the service does to the outside world goes through one of
//! these traits: the log (Kafka), the document store (Mongo), the
//! new-conversation hook (OpenIM's conversation RPC), time and randomness.
//! Redis is the exception by design: the Redis logic is written once against
//! `redis::aio::ConnectionLike` (see `crate::cache`), which real connections,
//! the embedded model and the simulator's sockets all implement, so the very
//! same scripts run everywhere.
//!
//! Implementations live in `crate::embedded` (in-process, deterministic) and,
//! for production, in the backends module; the simulator brings its own.
//! Futures are boxed so the pipeline can hold `Arc<dyn …>` handles and be
//! wired at run time without generic plumbing.

pub mod clock;
pub mod hook;
pub mod log;
pub mod rng;
pub mod store;

pub use clock::{Clock, ProcessUsage, SharedClock};
pub use hook::{ConversationHook, NewConversation};
pub use log::{ConsumerEvent, LogConsumer, LogError, LogProducer, OutRecord, Record};
pub use rng::{Rng, SeededRng};
pub use store::{DocStore, StoreError};

/// A boxed, sendable future, the return type of every port method.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
