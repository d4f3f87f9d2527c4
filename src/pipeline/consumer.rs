//! The consumer loop shared by both input topics.
//!
//! It reads records in partition order, lets a [`Handler`] split each one
//! into per-conversation items, and keeps one queue per conversation. A
//! conversation has at most one batch in flight, so its items are processed
//! in partition order; different conversations run concurrently, so a slow
//! or hot conversation never holds the others back. A record's offset
//! becomes committable once every item it produced is done
//! ([`OffsetTracker`]); records that cannot be decoded go whole to the
//! dead-letter topic first.
//!
//! Batching: a conversation runs as soon as `batch_target` items wait, or
//! when its oldest item has waited `linger`, or at once when the input is
//! drained — so batches grow under load (fewer Redis round trips per
//! message) and stay immediate when traffic is light.
//!
//! Bounds: at most `max_inflight` batches run at once, at most `max_batch`
//! items form a batch, and polling pauses while `max_queued` items wait.
//!
//! Shutdown (drain): stop polling, let the running batches finish (within
//! `drain_timeout`), commit what is done, return. Items still queued are not
//! started; they are uncommitted and will be delivered again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rustc_hash::FxHashMap;
use tokio::sync::watch;

use super::offsets::OffsetTracker;
use super::retry::{Backoff, Retrier};
use crate::metrics::Metrics;
use crate::ports::{
    BoxFuture, ConsumerEvent, LogConsumer, LogError, LogProducer, OutRecord, Record, Rng,
    SharedClock,
};

/// Why a record is refused; it goes to the dead-letter topic with this
/// reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection(pub String);

impl From<crate::domain::limits::OverLimit> for Rejection {
    fn from(e: crate::domain::limits::OverLimit) -> Self {
        Rejection(e.to_string())
    }
}

/// A conversation key: items with the same key are processed in order.
pub type ConvKey = Arc<str>;

/// A batch of one conversation's items. They stay in the boxes they were
/// queued in: items are a hundred bytes and more (a decoded message, when
/// the transfer items still held one, was over 600), and moving each out of
/// its box into a batch vector was a measurable share of the loop's copying
/// and fresh memory.
#[allow(
    clippy::vec_box,
    reason = "the boxes are the queue's, handed over as they are"
)]
pub type Batch<I> = Vec<Box<I>>;

/// What the loop needs from the topic-specific logic.
pub trait Handler: Send + Sync + 'static {
    /// One unit of work bound to one conversation.
    type Item: Send + 'static;

    /// Splits a record into its items, or refuses it. Each item comes in
    /// the box it is queued and processed in (see [`Batch`]): built there
    /// once, it is never copied again on its way to the batch.
    #[allow(clippy::type_complexity, reason = "a list of (key, boxed item) pairs")]
    fn decode(&self, record: &Record) -> Result<Vec<(ConvKey, Box<Self::Item>)>, Rejection>;

    /// Processes a batch of one conversation until every effect is
    /// acknowledged, retrying transient failures itself. Items arrive in
    /// partition order, in the boxes they were queued in (see [`Batch`]).
    fn process(
        self: Arc<Self>,
        conversation: ConvKey,
        items: Batch<Self::Item>,
    ) -> BoxFuture<'static, ()>;
}

/// Tunables of the loop.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Records asked for per poll.
    pub max_poll_records: usize,
    /// How long a poll waits for records.
    pub poll_wait: Duration,
    /// Items of one conversation per batch, at most.
    pub max_batch: usize,
    /// A conversation with this many items waiting runs at once.
    pub batch_target: usize,
    /// A conversation with fewer items waits at most this long for more,
    /// unless the input is drained (then it runs at once).
    pub linger: Duration,
    /// Batches running at once.
    pub max_inflight: usize,
    /// Items consumed but not done before polling pauses.
    pub max_queued: usize,
    /// How often done offsets are committed.
    pub commit_interval: Duration,
    /// How long a drain waits for running batches.
    pub drain_timeout: Duration,
    /// Where refused records go.
    pub dlq_topic: Arc<str>,
    /// Retry delays for dead-letter produces and commits.
    pub backoff: Backoff,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_poll_records: 1000,
            poll_wait: Duration::from_millis(50),
            max_batch: 500,
            batch_target: 100,
            linger: Duration::from_millis(2),
            max_inflight: 256,
            max_queued: 200_000,
            commit_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(8),
            dlq_topic: Arc::from("msgtransfer-dlq"),
            backoff: Backoff::default(),
        }
    }
}

/// Header names added to dead-lettered records (after the original ones,
/// so OpenIM's positional headers keep their places).
pub mod dlq_header {
    /// Why the record was refused.
    pub const REASON: &str = "x-dlq-reason";
    /// Topic it was read from.
    pub const SOURCE_TOPIC: &str = "x-dlq-source-topic";
    /// Partition it was read from.
    pub const SOURCE_PARTITION: &str = "x-dlq-source-partition";
    /// Offset it was read from.
    pub const SOURCE_OFFSET: &str = "x-dlq-source-offset";
    /// When it was refused, ms since the epoch.
    pub const TIME_MS: &str = "x-dlq-time-ms";
}

/// The services the loop itself uses.
#[derive(Clone)]
pub struct LoopDeps {
    /// Producer for dead letters.
    pub producer: Arc<dyn LogProducer>,
    /// Time.
    pub clock: SharedClock,
    /// Randomness (backoff jitter).
    pub rng: Arc<dyn Rng>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// Why the loop stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// A batch task panicked: a bug, surfaced instead of swallowed.
    #[error("a batch task failed: {0}")]
    Task(String),
}

/// Identifies the record a unit of work came from: partition, offset and
/// the assignment generation it was read in. Work finishing after its
/// partition was revoked (and perhaps assigned back, with the same offsets
/// delivered again) must not count for the new delivery.
type Token = (i32, i64, u64);

enum Done {
    Batch(ConvKey, Vec<Token>),
    DeadLetter(Token),
}

/// The dead-letter record for `record` refused for `reason`.
pub fn dead_letter(record: &Record, reason: &str, topic: &Arc<str>, now_ms: i64) -> OutRecord {
    let mut headers: Vec<(String, Vec<u8>)> = record.headers.to_vec();
    headers.push((dlq_header::REASON.into(), reason.as_bytes().to_vec()));
    headers.push((
        dlq_header::SOURCE_TOPIC.into(),
        record.topic.as_bytes().to_vec(),
    ));
    headers.push((
        dlq_header::SOURCE_PARTITION.into(),
        record.partition.to_string().into_bytes(),
    ));
    headers.push((
        dlq_header::SOURCE_OFFSET.into(),
        record.offset.to_string().into_bytes(),
    ));
    headers.push((dlq_header::TIME_MS.into(), now_ms.to_string().into_bytes()));
    OutRecord {
        topic: topic.clone(),
        key: record.key.clone(),
        value: record.value.clone(),
        headers: headers.into(),
    }
}

async fn produce_until_acked(deps: &LoopDeps, rec: OutRecord, backoff: &Backoff) {
    let mut retry = Retrier::new(backoff);
    loop {
        match deps.producer.send(rec.clone()).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(topic = %rec.topic, error = %e, "dead-letter produce failed; retrying");
                Metrics::add(&deps.metrics.retries, 1);
                retry.wait(deps.clock.as_ref(), deps.rng.as_ref()).await;
            }
        }
    }
}

/// The queue and state of one conversation.
struct Conv<I> {
    /// Waiting items with the time each arrived (µs, monotonic). Items are
    /// boxed: they are a hundred bytes and more, and a queue that grows by
    /// doubling would otherwise copy them around and fault in fresh memory
    /// on every growth (measured as the largest cost of the loop when the
    /// items held decoded messages).
    queue: VecDeque<(Token, u64, Box<I>)>,
    /// A batch of this conversation is running.
    running: bool,
    /// Listed in `Loop::waiting`.
    waiting: bool,
    /// Listed in `Loop::full`.
    full: bool,
}

/// The state of one running loop.
struct Loop<H: Handler> {
    handler: Arc<H>,
    deps: LoopDeps,
    cfg: ConsumerConfig,
    tracker: OffsetTracker,
    convs: FxHashMap<ConvKey, Conv<H::Item>>,
    /// Idle conversations with items, oldest first item first. Entries can
    /// be stale (the conversation was dispatched from `full` meanwhile);
    /// the flags in `Conv` say which are current.
    waiting: VecDeque<ConvKey>,
    /// Idle conversations with at least `batch_target` items.
    full: VecDeque<ConvKey>,
    queued: usize,
    /// Running batches and dead-letter produces. They are futures of this
    /// task, not spawned tasks: no cross-thread wake-ups per batch, a
    /// deterministic poll order, and dropping the loop drops them all.
    tasks: FuturesUnordered<BoxFuture<'static, Done>>,
    committed: FxHashMap<i32, i64>,
    /// Work finished since the last commit.
    dirty: bool,
    /// Per partition, bumped when it is revoked; see [`Token`].
    generations: FxHashMap<i32, u64>,
    /// Per partition, records among the running tasks (a record counts
    /// once per task that holds a unit of it).
    running: FxHashMap<i32, usize>,
}

impl<H: Handler> Loop<H> {
    fn enqueue(&mut self, conv: ConvKey, token: Token, now_us: u64, item: Box<H::Item>) {
        let c = self.convs.entry(conv.clone()).or_insert_with(|| Conv {
            queue: VecDeque::new(),
            running: false,
            waiting: false,
            full: false,
        });
        c.queue.push_back((token, now_us, item));
        self.queued += 1;
        if !c.running {
            self.list(conv);
        }
    }

    /// The current assignment generation of `partition`.
    fn generation(&self, partition: i32) -> u64 {
        self.generations.get(&partition).copied().unwrap_or(0)
    }

    /// Lists an idle conversation with waiting items as waiting, and as full
    /// once it has `batch_target` items (each at most once).
    fn list(&mut self, conv: ConvKey) {
        let Some(c) = self.convs.get_mut(&conv) else {
            return;
        };
        if !c.waiting {
            c.waiting = true;
            self.waiting.push_back(conv.clone());
        }
        if !c.full && c.queue.len() >= self.cfg.batch_target {
            c.full = true;
            self.full.push_back(conv);
        }
    }

    /// The next conversation to run: a full one, else the one waiting
    /// longest if it waited `linger` (or if `flush`).
    fn next_ready(&mut self, now_us: u64, flush: bool) -> Option<ConvKey> {
        while let Some(conv) = self.full.pop_front() {
            if let Some(c) = self.convs.get_mut(&conv) {
                c.full = false;
                if !c.running && !c.queue.is_empty() {
                    return Some(conv);
                }
            }
        }
        let linger = self.cfg.linger.as_micros() as u64;
        while let Some(conv) = self.waiting.front() {
            let Some(c) = self.convs.get_mut(conv) else {
                self.waiting.pop_front();
                continue;
            };
            if c.running || c.queue.is_empty() || !c.waiting {
                c.waiting = false;
                self.waiting.pop_front();
                continue;
            }
            let oldest = c.queue.front().map(|(_, t, _)| *t).unwrap_or(now_us);
            if !flush && now_us.saturating_sub(oldest) < linger {
                return None;
            }
            c.waiting = false;
            return self.waiting.pop_front();
        }
        None
    }

    /// When the oldest waiting conversation becomes due (µs), if any.
    fn next_due(&self) -> Option<u64> {
        let conv = self.waiting.front()?;
        let oldest = self.convs.get(conv)?.queue.front()?.1;
        Some(oldest + self.cfg.linger.as_micros() as u64)
    }

    fn dispatch(&mut self, now_us: u64, flush: bool) {
        while self.tasks.len() < self.cfg.max_inflight {
            let Some(conv) = self.next_ready(now_us, flush) else {
                break;
            };
            let Some(c) = self.convs.get_mut(&conv) else {
                continue;
            };
            let n = c.queue.len().min(self.cfg.max_batch);
            let mut tokens = Vec::with_capacity(n);
            let mut items = Vec::with_capacity(n);
            for (t, _, it) in c.queue.drain(..n) {
                tokens.push(t);
                items.push(it);
            }
            c.running = true;
            for (p, _, _) in &tokens {
                *self.running.entry(*p).or_insert(0) += 1;
            }
            let handler = self.handler.clone();
            self.tasks.push(Box::pin(async move {
                handler.process(conv.clone(), items).await;
                Done::Batch(conv, tokens)
            }));
        }
    }

    fn on_done(&mut self, done: Done) {
        self.dirty = true;
        match done {
            Done::Batch(conv, tokens) => {
                self.queued -= tokens.len();
                for (p, o, g) in tokens {
                    self.finished(p);
                    if g == self.generation(p) {
                        self.tracker.done(p, o);
                    }
                }
                let Some(c) = self.convs.get_mut(&conv) else {
                    return;
                };
                c.running = false;
                if c.queue.is_empty() {
                    self.convs.remove(&conv);
                } else {
                    self.list(conv);
                }
            }
            Done::DeadLetter((p, o, g)) => {
                self.finished(p);
                Metrics::add(&self.deps.metrics.dlq_records, 1);
                if g == self.generation(p) {
                    self.tracker.done(p, o);
                }
            }
        }
    }

    fn on_records(&mut self, records: Vec<Record>, now_us: u64) {
        for rec in records {
            let token = (rec.partition, rec.offset, self.generation(rec.partition));
            match self.handler.decode(&rec) {
                Ok(units) => {
                    if !self
                        .tracker
                        .track(rec.partition, rec.offset, units.len() as u32)
                    {
                        continue;
                    }
                    for (conv, item) in units {
                        self.enqueue(conv, token, now_us, item);
                    }
                }
                Err(Rejection(reason)) => {
                    if !self.tracker.track(rec.partition, rec.offset, 1) {
                        continue;
                    }
                    tracing::warn!(
                        topic = %rec.topic, partition = rec.partition, offset = rec.offset,
                        reason = %reason, "record refused; sending it to the dead-letter topic"
                    );
                    let out =
                        dead_letter(&rec, &reason, &self.cfg.dlq_topic, self.deps.clock.now_ms());
                    let deps = self.deps.clone();
                    let backoff = self.cfg.backoff.clone();
                    *self.running.entry(rec.partition).or_insert(0) += 1;
                    self.tasks.push(Box::pin(async move {
                        produce_until_acked(&deps, out, &backoff).await;
                        Done::DeadLetter(token)
                    }));
                }
            }
        }
    }

    fn finished(&mut self, partition: i32) {
        if let Some(n) = self.running.get_mut(&partition) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(&partition);
            }
        }
    }

    /// Handles a revocation of `partitions`: no new work for them, their
    /// running work finished (for at most `limit`; what is still running
    /// then is abandoned to the next owner), what is done committed, the
    /// partitions forgotten, and handed back to the log. Until the hand
    /// back, the next owner does not start: two owners never write the same
    /// documents at once.
    async fn on_revoked(
        &mut self,
        partitions: &[i32],
        consumer: &mut dyn LogConsumer,
        limit: Duration,
    ) {
        let mut dropped = 0;
        for c in self.convs.values_mut() {
            let before = c.queue.len();
            c.queue.retain(|((p, _, _), _, _)| !partitions.contains(p));
            dropped += before - c.queue.len();
        }
        self.queued -= dropped;
        self.convs.retain(|_, c| c.running || !c.queue.is_empty());

        let busy = |lp: &Self| partitions.iter().any(|p| lp.running.contains_key(p));
        if busy(self) {
            let mut deadline = self.deps.clock.sleep(limit);
            while busy(self) {
                tokio::select! {
                    biased;
                    Some(done) = self.tasks.next() => self.on_done(done),
                    _ = &mut deadline => {
                        tracing::warn!(
                            ?partitions,
                            "revoked partitions still have running batches; handing them over anyway"
                        );
                        break;
                    }
                }
            }
        }
        self.commit(consumer).await;

        self.tracker.revoke(partitions);
        for p in partitions {
            *self.generations.entry(*p).or_insert(0) += 1;
            self.committed.remove(p);
        }
        if let Err(e) = consumer.release(partitions.to_vec()).await {
            tracing::warn!(error = %e, "handing back revoked partitions failed");
        }
    }

    async fn commit(&mut self, consumer: &mut dyn LogConsumer) {
        let moved: Vec<(i32, i64)> = self
            .tracker
            .commit_points()
            .into_iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .collect();
        if moved.is_empty() {
            self.dirty = false;
            return;
        }
        match consumer.commit(moved.clone()).await {
            Ok(()) => {
                self.dirty = false;
                Metrics::add(&self.deps.metrics.commits, moved.len() as u64);
                for (p, o) in moved {
                    self.committed.insert(p, o);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; will retry");
                Metrics::add(&self.deps.metrics.retries, 1);
            }
        }
    }
}

/// Runs the loop until `shutdown` turns true (then drains) or the consumer
/// is closed.
pub async fn run<H: Handler>(
    handler: Arc<H>,
    mut consumer: Box<dyn LogConsumer>,
    deps: LoopDeps,
    cfg: ConsumerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LoopError> {
    let clock = deps.clock.clone();
    let mut lp = Loop {
        handler,
        deps: deps.clone(),
        cfg: cfg.clone(),
        tracker: OffsetTracker::new(),
        convs: FxHashMap::default(),
        waiting: VecDeque::new(),
        full: VecDeque::new(),
        queued: 0,
        tasks: FuturesUnordered::new(),
        committed: FxHashMap::default(),
        dirty: false,
        generations: FxHashMap::default(),
        running: FxHashMap::default(),
    };
    let mut draining = *shutdown.borrow();
    let mut poll_retry = Retrier::new(&cfg.backoff);
    let commit_every_us = cfg.commit_interval.as_micros() as u64;
    let mut last_commit = clock.monotonic_us();
    let mut drain_deadline = draining.then(|| clock.sleep(cfg.drain_timeout));
    // Whether the last poll found the input drained: then waiting
    // conversations run at once instead of lingering for a fuller batch.
    let mut input_idle = false;

    loop {
        let now = clock.monotonic_us();
        let may_poll = !draining && lp.queued < cfg.max_queued;
        if !draining {
            lp.dispatch(now, input_idle || !may_poll);
        }
        if draining && lp.tasks.is_empty() {
            break;
        }
        // Wake up when a lingering conversation becomes due, and when done
        // work is waiting to be committed — whatever the input does.
        let due = (!draining && lp.tasks.len() < cfg.max_inflight)
            .then(|| lp.next_due())
            .flatten();
        let commit_at = lp.dirty.then_some(last_commit + commit_every_us);
        let wake = match (due, commit_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(|t| Duration::from_micros(t.saturating_sub(now).max(1)));
        tokio::select! {
            biased;
            // Input first: reading ahead (up to max_queued) is what lets
            // batches grow; a poll with nothing ready costs nothing here.
            polled = consumer.poll(cfg.max_poll_records, cfg.poll_wait), if may_poll => {
                match polled {
                    Ok(ConsumerEvent::Records(recs)) => {
                        poll_retry = Retrier::new(&cfg.backoff);
                        input_idle = false;
                        lp.on_records(recs, clock.monotonic_us());
                    }
                    Ok(ConsumerEvent::Assigned(parts)) => {
                        tracing::info!(?parts, "partitions assigned");
                    }
                    Ok(ConsumerEvent::Revoked(parts)) => {
                        tracing::info!(?parts, "partitions revoked");
                        lp.on_revoked(&parts, consumer.as_mut(), cfg.drain_timeout).await;
                    }
                    Ok(ConsumerEvent::Idle) => input_idle = true,
                    Err(LogError::Closed) => {
                        draining = true;
                        drain_deadline = Some(clock.sleep(cfg.drain_timeout));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "poll failed; retrying");
                        Metrics::add(&deps.metrics.retries, 1);
                        poll_retry.wait(clock.as_ref(), deps.rng.as_ref()).await;
                    }
                }
            }
            Some(done) = lp.tasks.next(), if !lp.tasks.is_empty() => lp.on_done(done),
            _ = async { drain_deadline.as_mut().expect("guarded").await }, if drain_deadline.is_some() => {
                tracing::warn!(running = lp.tasks.len(), "drain timed out; abandoning running batches (they stay uncommitted)");
                lp.tasks.clear();
                break;
            }
            changed = shutdown.changed(), if !draining => {
                if changed.is_err() || *shutdown.borrow() {
                    draining = true;
                    drain_deadline = Some(clock.sleep(cfg.drain_timeout));
                }
            }
            _ = async { clock.sleep(wake.unwrap_or_default()).await }, if wake.is_some() => {}
        }
        let now = clock.monotonic_us();
        if now.saturating_sub(last_commit) >= commit_every_us {
            lp.commit(consumer.as_mut()).await;
            last_commit = now;
        }
    }
    lp.commit(consumer.as_mut()).await;
    Ok(())
}
