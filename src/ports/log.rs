//! The partitioned log (Kafka), as the pipeline needs it.
//!
//! A consumer belongs to a consumer group, is assigned partitions, hands out
//! records in partition order and commits, per partition, the offset to
//! resume from. A producer enqueues records and returns a future that
//! resolves when the broker acknowledged (or refused) each one; records of
//! one key that are enqueued in order are appended in order.
//!
//! What implementations must guarantee:
//! - `poll` is cancel-safe: dropping its future loses no record;
//! - after a restart (a new consumer of the same group), delivery resumes at
//!   the committed offsets, so anything not committed is delivered again;
//! - a produce acknowledgement means the record is durably in the log; an
//!   error means it may or may not be (the caller retries and tolerates a
//!   duplicate).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::BoxFuture;
use crate::domain::context::Header;

/// One record read from the log. Cheap to clone: the payloads are shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: Arc<str>,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Record key (may be empty).
    pub key: Bytes,
    /// Record value.
    pub value: Bytes,
    /// Headers in order.
    pub headers: Arc<[Header]>,
    /// Producer timestamp, ms since the epoch.
    pub timestamp_ms: i64,
}

/// One record to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Key; decides the partition.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
    /// Headers in order (shared: records produced for one input record
    /// usually carry the same headers).
    pub headers: Arc<[Header]>,
}

impl OutRecord {
    /// Encoded size as the broker counts it, roughly: key, value and headers.
    pub fn size(&self) -> usize {
        self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Where a produced record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// What a poll returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerEvent {
    /// Records, in partition order within each partition.
    Records(Vec<Record>),
    /// These partitions are now ours; delivery starts at their committed
    /// offsets.
    Assigned(Vec<i32>),
    /// These partitions are being taken away. The loop stops starting work
    /// for them, waits (bounded) for what is running, commits, forgets
    /// them and calls [`LogConsumer::release`]; a log may keep them from
    /// their next owner until then.
    Revoked(Vec<i32>),
    /// Nothing arrived within the wait.
    Idle,
}

/// Log failures. Every one of them is treated as transient by the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The broker could not be reached or did not answer in time.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the request.
    #[error("log refused request: {0}")]
    Refused(String),
    /// The record is larger than the broker accepts.
    #[error("record of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Record size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The consumer was closed.
    #[error("consumer closed")]
    Closed,
}

/// A consumer-group member reading one topic.
pub trait LogConsumer: Send {
    /// Waits at most `wait` for up to `max` records or a rebalance event.
    /// Cancel-safe.
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<ConsumerEvent, LogError>>;

    /// Commits, for each `(partition, next_offset)`, the offset to resume
    /// from. Offsets only ever move forward.
    fn commit(&mut self, offsets: Vec<(i32, i64)>) -> BoxFuture<'_, Result<(), LogError>>;

    /// Hands back the partitions of the last [`ConsumerEvent::Revoked`]:
    /// the loop has finished (or stopped waiting for) their running work
    /// and committed what is done. The default does nothing, for a log that
    /// hands revoked partitions over at once.
    fn release(&mut self, partitions: Vec<i32>) -> BoxFuture<'_, Result<(), LogError>> {
        let _ = partitions;
        Box::pin(async { Ok(()) })
    }
}

/// The acknowledgement of one produce.
pub type Ack = BoxFuture<'static, Result<Delivered, LogError>>;

/// A producer to any topic.
pub trait LogProducer: Send + Sync + 'static {
    /// Enqueues `record`; the returned future resolves with the broker's
    /// answer. Records enqueued in order are appended in order per partition.
    fn send(&self, record: OutRecord) -> Ack;

    /// The largest record the broker accepts, in bytes.
    fn max_record_bytes(&self) -> usize;
}
