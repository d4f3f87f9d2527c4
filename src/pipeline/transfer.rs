//! The `toRedis` handler: from a chat message to seq, cache, push and
//! persistence records.
//!
//! Per record ([`Handler::decode`]): check the `MsgData` without building
//! it ([`scan`]), read a receipt's content, plan its units (one per
//! conversation). A record that does not decode or has no conversation is
//! refused whole (dead-letter topic). A unit waits for its batch as the
//! record's bytes; the message is decoded when the batch runs.
//!
//! Per conversation batch ([`Handler::process`]), in this order, each step
//! acknowledged before the next:
//! 1. read receipts raise `seq_user.read_seq` in Mongo (max-only);
//! 2. stored messages, in chunks of `assign_chunk`, go through the Redis
//!    assign script (dedup + seq + `MSG_CACHE` + sender read seq in Redis);
//! 3. a chat conversation's first message (seq 1) is announced to the
//!    conversation hook;
//! 4. senders' read seqs are raised in Mongo (max-only);
//! 5. `toMongo` records (runs of contiguous seqs, split under the producer's
//!    size limit) and then one `toPush` record per message are produced, and
//!    every acknowledgement is awaited.
//!
//! A failed step is retried after a backoff until it succeeds (a failed
//! produce re-sends just the failed records). Every step is idempotent — the
//! assign script hands redelivered messages their first seq back, Mongo
//! writes are max-only or slot overwrites, produces are at-least-once — so a
//! retry (or a redelivery after a crash) repeats effects with the same seqs
//! and never invents new ones.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use redis::aio::ConnectionLike;
use rustc_hash::FxHashMap;

use super::consumer::{Batch, ConvKey, Handler, Rejection};
use super::retry::{Backoff, Retrier};
use crate::cache::{self, AssignItem, CacheConfig};
use crate::domain::categorise::{Role, plan};
use crate::domain::context::{HEADER_KEYS, Header, MsgContext, header_text};
use crate::domain::conversation::Parties;
use crate::domain::limits::Limits;
use crate::domain::receipt::{self, ReadReceipt};
use crate::domain::{cache_json, content};
use crate::metrics::Metrics;
use crate::ports::{
    BoxFuture, ConversationHook, DocStore, LogProducer, NewConversation, OutRecord, Record, Rng,
    SharedClock,
};
use crate::proto::MsgData;
use crate::proto::scan::scan;

/// Appends an embedded-message field (`tag` = `field`, length-delimited)
/// whose payload is the already encoded message `body`.
fn put_message_field(field: u32, body: &[u8], buf: &mut impl BufMut) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(body.len() as u64, buf);
    buf.put_slice(body);
}

/// Appends a string field; the same bytes as prost's `string::encode`,
/// without the owned `String` it takes.
fn put_string_field(field: u32, text: &str, buf: &mut impl BufMut) {
    put_message_field(field, text.as_bytes(), buf);
}

/// The encoded size of `PushMsgDataToMq` around `msg_data` (see
/// [`put_push_record`]).
fn push_record_len(msg_data: &[u8], conv: &str) -> usize {
    let field = |len: usize| 1 + prost::encoding::encoded_len_varint(len as u64) + len;
    field(msg_data.len())
        + if conv.is_empty() {
            0
        } else {
            field(conv.len())
        }
}

/// Appends `PushMsgDataToMq { msgData, conversationID: conv }` around the
/// encoded `msg_data` to `buf` (see [`encode_push_record`]).
fn put_push_record(msg_data: &[u8], conv: &str, buf: &mut impl BufMut) {
    put_message_field(1, msg_data, buf);
    if !conv.is_empty() {
        put_string_field(2, conv, buf);
    }
}

/// Encodes `PushMsgDataToMq { msgData, conversationID: conv }` around
/// `msg_data`, the `MsgData` already encoded (once per message: the same
/// bytes go into its `toMongo` record); the result is exactly prost's
/// encoding of the struct.
pub fn encode_push_record(msg_data: &[u8], conv: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(push_record_len(msg_data, conv));
    put_push_record(msg_data, conv, &mut buf);
    buf
}

/// Encodes `MsgDataToMongoByMq { lastSeq, conversationID, msgData }` around
/// already encoded `MsgData`s; the result is exactly prost's encoding of
/// the struct.
pub fn encode_mongo_record<'a>(
    last_seq: i64,
    conv: &str,
    msg_data: impl Iterator<Item = &'a [u8]> + Clone,
) -> Vec<u8> {
    let body: usize = msg_data.clone().map(|m| m.len() + 10).sum();
    let mut buf = Vec::with_capacity(body + conv.len() + 16);
    if last_seq != 0 {
        prost::encoding::int64::encode(1, &last_seq, &mut buf);
    }
    if !conv.is_empty() {
        put_string_field(2, conv, &mut buf);
    }
    for m in msg_data {
        put_message_field(3, m, &mut buf);
    }
    buf
}

/// Topic names (OpenIM's defaults from `kafka.yml`, plus our dead letters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// Input of the transfer stage.
    pub to_redis: Arc<str>,
    /// Persistence records (produced and consumed here).
    pub to_mongo: Arc<str>,
    /// Push records.
    pub to_push: Arc<str>,
    /// Refused records.
    pub dlq: Arc<str>,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            to_redis: Arc::from("toRedis"),
            to_mongo: Arc::from("toMongo"),
            to_push: Arc::from("toPush"),
            dlq: Arc::from("msgtransfer-dlq"),
        }
    }
}

/// OpenIM's known weaknesses, each of which can be put back for the
/// simulator's mutants: a simulation that does not catch one of them is not
/// looking hard enough. All off by default, and no configuration file can
/// turn them on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weaknesses {
    /// A failed step is not retried: the batch is given up and counts as
    /// done, so its offsets get committed (OpenIM commits the last record of
    /// a batch whatever happened to the others).
    pub give_up_on_failure: bool,
    /// No dedup: a redelivered message gets a new seq.
    pub no_dedup: bool,
    /// A conversation batch with more than 100 stored messages is dropped
    /// whole.
    pub drop_over_100: bool,
}

/// Tunables of the transfer stage.
#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Topic names.
    pub topics: Topics,
    /// Stored messages per assign-script call (OpenIM's cache limit is 100).
    pub assign_chunk: usize,
    /// Redis TTLs and the dedup window.
    pub cache: CacheConfig,
    /// Retry delays for failed batches.
    pub backoff: Backoff,
    /// Room kept below the producer's record limit for the envelope around
    /// a message (conversation ID, seqs, headers).
    pub envelope_margin_bytes: usize,
    /// Limits every input record is held to before it is processed.
    pub limits: Limits,
    /// Weaknesses put back on purpose (simulator mutants only).
    pub weaknesses: Weaknesses,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            topics: Topics::default(),
            assign_chunk: 100,
            cache: CacheConfig::default(),
            backoff: Backoff::default(),
            envelope_margin_bytes: 4096,
            limits: Limits::default(),
            weaknesses: Weaknesses::default(),
        }
    }
}

/// One message bound for one conversation, as it waits for its batch.
///
/// It holds the record's bytes (shared with the record) and what the
/// categorisation decided, not the decoded message: the read-ahead can hold
/// hundreds of thousands of items, and a decoded `MsgData` with its strings
/// and options map is several times the size of its encoding. The batch
/// decodes it ([`TransferItem::message`]) right before using it.
#[derive(Debug)]
pub struct TransferItem {
    /// The record's value: an encoded `sdkws.MsgData` that [`scan`]
    /// accepted, so it decodes.
    pub value: Bytes,
    /// How this unit's message is made from the record's.
    pub role: Role,
    /// Whether the message gets a seq, a cache entry and a Mongo slot.
    pub stored: bool,
    /// Whether the conversation is a chat one (not `n_…`): only those update
    /// the sender's read seq and announce new conversations.
    pub chat: bool,
    /// The input record's key, reused for the records we produce.
    pub key: Bytes,
    /// The four positional headers of the record's context, as produced on
    /// `toPush`.
    pub headers: Arc<[Header]>,
    /// The read receipt this message carries, if it is one (attached to the
    /// first unit of the record only).
    pub receipt: Option<Box<ReadReceipt>>,
}

impl TransferItem {
    /// This unit's message, decoded from the record and made by its role
    /// (its `seq` is still the one it came with).
    pub fn message(&self) -> MsgData {
        // `scan` accepts exactly what decoding accepts (tested against prost
        // in `proto::scan` and by the `to_redis` fuzz target), and `decode`
        // refused every value `scan` did not accept.
        let msg = MsgData::decode(self.value.as_ref())
            .expect("a value accepted by scan decodes as MsgData");
        self.role.apply(msg)
    }

    /// The record's context, from its positional headers.
    pub fn context(&self) -> MsgContext {
        MsgContext::from_headers(&self.headers)
    }

    /// The record's operation ID (its first positional header), read as
    /// `MsgContext` reads it.
    pub fn operation_id(&self) -> std::borrow::Cow<'_, str> {
        header_text(&self.headers, 0)
    }
}

/// The backends the transfer stage talks to.
pub struct TransferDeps<C> {
    /// A Redis connection (cloned per batch).
    pub redis: C,
    /// Mongo.
    pub store: Arc<dyn DocStore>,
    /// Kafka producer.
    pub producer: Arc<dyn LogProducer>,
    /// The conversation service.
    pub hook: Arc<dyn ConversationHook>,
    /// Time.
    pub clock: SharedClock,
    /// Randomness (lock tokens, jitter).
    pub rng: Arc<dyn Rng>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The `toRedis` handler.
pub struct Transfer<C> {
    deps: TransferDeps<C>,
    cfg: TransferConfig,
    tokens: cache::TokenSource,
    /// The last seq this instance saw handed out per conversation, to
    /// predict the next ones (see [`AssignItem::json`]). Only a hint: a
    /// wrong or missing prediction costs the script a string splice.
    last_seqs: parking_lot::Mutex<FxHashMap<ConvKey, i64>>,
}

/// Conversations whose last seq [`Transfer`] remembers; past this many the
/// memory is dropped and rebuilt from the next batches.
const REMEMBERED_CONVERSATIONS: usize = 1 << 16;

impl<C> Transfer<C> {
    /// A handler over `deps`.
    pub fn new(deps: TransferDeps<C>, cfg: TransferConfig) -> Self {
        let tokens = cache::TokenSource::new(deps.rng.as_ref());
        Self {
            deps,
            cfg,
            tokens,
            last_seqs: parking_lot::Mutex::new(FxHashMap::default()),
        }
    }

    /// The seq the next new message of `conv` is expected to get: one past
    /// the last one seen, or 1 (a new conversation) when none was.
    fn predict(&self, conv: &ConvKey) -> i64 {
        self.last_seqs.lock().get(conv).map_or(1, |last| last + 1)
    }

    /// Remembers that `conv` handed out seqs up to `last`.
    fn saw(&self, conv: &ConvKey, last: i64) {
        let mut seen = self.last_seqs.lock();
        if seen.len() >= REMEMBERED_CONVERSATIONS && !seen.contains_key(conv) {
            seen.clear();
        }
        let e = seen.entry(conv.clone()).or_insert(last);
        *e = (*e).max(last);
    }
}

/// Stored messages of a batch, prepared once and reused across retries.
struct Prepared {
    /// Indices of stored items, in order.
    stored: Vec<usize>,
    /// Per stored item: its cache JSON written with its predicted seq, where
    /// that seq's digits start, and the predicted seq.
    json: Vec<(String, usize, i64)>,
    /// Receipts aggregated per (user, conversation): max read seq.
    receipts: BTreeMap<(String, String), i64>,
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Transfer<C> {
    /// `first` is the seq the first stored message is predicted to get; the
    /// others follow it in order.
    fn prepare(items: &[Box<TransferItem>], msgs: &[MsgData], first: i64) -> Prepared {
        let stored: Vec<usize> = (0..items.len()).filter(|i| items[*i].stored).collect();
        let json = stored
            .iter()
            .zip(first..)
            .map(|(i, predicted)| {
                let (json, at) = cache_json::encode_at(&msgs[*i], predicted);
                (json, at, predicted)
            })
            .collect();
        let mut receipts = BTreeMap::new();
        for it in items {
            if let Some(r) = &it.receipt {
                let e = receipts
                    .entry((r.user_id.clone(), r.conversation_id.clone()))
                    .or_insert(i64::MIN);
                *e = (*e).max(r.read_seq);
            }
        }
        Prepared {
            stored,
            json,
            receipts,
        }
    }

    /// Runs `op` until it succeeds, backing off between failures, counting
    /// each failure in `failed` (if given) and in `retries`. `None` only
    /// under [`Weaknesses::give_up_on_failure`].
    async fn until_ok<T, E, F, Fut>(
        &self,
        what: &str,
        conv: &str,
        failed: Option<&AtomicU64>,
        mut op: F,
    ) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut retry = Retrier::new(&self.cfg.backoff);
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    if let Some(c) = failed {
                        Metrics::add(c, 1);
                    }
                    if self.cfg.weaknesses.give_up_on_failure {
                        return None;
                    }
                    Metrics::add(&self.deps.metrics.retries, 1);
                    tracing::warn!(
                        conversation = %conv, step = what, error = %e,
                        attempt = retry.attempts + 1, "transfer step failed; retrying"
                    );
                    retry
                        .wait(self.deps.clock.as_ref(), self.deps.rng.as_ref())
                        .await;
                }
            }
        }
    }

    async fn process_batch(self: Arc<Self>, conv: ConvKey, items: Batch<TransferItem>) {
        // `None`: given up (only under a weakness); the batch counts as done.
        let _ = self.run_batch(conv, items).await;
    }

    async fn run_batch(&self, conv: ConvKey, items: Batch<TransferItem>) -> Option<()> {
        // The batch's messages, decoded now that they are needed; their
        // seqs are filled in as the assign script hands them out.
        let mut msgs: Vec<MsgData> = items.iter().map(|it| it.message()).collect();
        let prep = Self::prepare(&items, &msgs, self.predict(&conv));
        let d = &self.deps;
        let m = &d.metrics;
        let cache_cfg = &self.cfg.cache;
        let tokens = &self.tokens;
        let weak = self.cfg.weaknesses;
        if weak.drop_over_100 && prep.stored.len() > 100 {
            return None;
        }

        for ((user, rconv), seq) in &prep.receipts {
            self.until_ok(
                "receipt read seq",
                &conv,
                Some(&m.seq_set_failed_total),
                || d.store.raise_read_seq(user, rconv, *seq),
            )
            .await?;
        }

        // Seqs, cache and Redis read seqs, one script call per chunk. A
        // retry after an unknown outcome gets the same seqs back (dedup).
        let chat = items.first().is_some_and(|it| it.chat);
        let chunk = self.cfg.assign_chunk.max(1);
        for (chunk_idx, json_chunk) in prep.stored.chunks(chunk).zip(prep.json.chunks(chunk)) {
            let assign_items: Vec<AssignItem<'_>> = chunk_idx
                .iter()
                .zip(json_chunk)
                .map(|(i, (json, seq_at, predicted))| {
                    let msg = &msgs[*i];
                    AssignItem {
                        // An empty ID is never looked up or recorded.
                        client_msg_id: if weak.no_dedup {
                            ""
                        } else {
                            &msg.client_msg_id
                        },
                        sender: chat.then_some(msg.send_id.as_str()),
                        json,
                        predicted: *predicted,
                        seq_at: *seq_at,
                    }
                })
                .collect();
            let assigned = self
                .until_ok(
                    "assign",
                    &conv,
                    Some(&m.msg_insert_redis_failed_total),
                    || {
                        let mut redis = d.redis.clone();
                        let assign_items = &assign_items;
                        let conv = &conv;
                        async move {
                            cache::assign(
                                &mut redis,
                                d.store.as_ref(),
                                d.clock.as_ref(),
                                tokens,
                                cache_cfg,
                                conv,
                                assign_items,
                            )
                            .await
                        }
                    },
                )
                .await?;
            drop(assign_items);
            let newest = assigned
                .seqs
                .iter()
                .zip(&assigned.hits)
                .filter(|(_, hit)| !**hit)
                .map(|(seq, _)| *seq)
                .max();
            if let Some(last) = newest {
                self.saw(&conv, last);
            }
            for (i, seq) in chunk_idx.iter().zip(&assigned.seqs) {
                msgs[*i].seq = *seq;
            }
            let hits = assigned.hits.iter().filter(|h| **h).count() as u64;
            Metrics::add(&m.msgs_stored, chunk_idx.len() as u64);
            Metrics::add(&m.dedup_hits, hits);
            Metrics::add(&m.msg_insert_redis_success_total, chunk_idx.len() as u64);
        }

        if chat {
            if let Some((first, msg)) = items
                .iter()
                .zip(&msgs)
                .find(|(it, msg)| it.stored && msg.seq == 1)
            {
                let announce = NewConversation {
                    conversation_id: conv.to_string(),
                    session_type: msg.session_type,
                    send_id: msg.send_id.clone(),
                    recv_id: msg.recv_id.clone(),
                    group_id: msg.group_id.clone(),
                    operation_id: first.operation_id().into_owned(),
                };
                self.until_ok("new conversation", &conv, None, || {
                    d.hook.created(announce.clone())
                })
                .await?;
                Metrics::add(&m.conversations_created, 1);
            }
            let mut top: BTreeMap<&str, i64> = BTreeMap::new();
            for (_, msg) in items.iter().zip(&msgs).filter(|(it, _)| it.stored) {
                let e = top.entry(msg.send_id.as_str()).or_insert(0);
                *e = (*e).max(msg.seq);
            }
            for (user, seq) in top {
                self.until_ok(
                    "sender read seq",
                    &conv,
                    Some(&m.seq_set_failed_total),
                    || d.store.raise_read_seq(user, &conv, seq),
                )
                .await?;
            }
        }

        // Copies of a message inside this batch share its seq; forward it once.
        let mut seen = std::collections::BTreeSet::new();
        let forward: Vec<bool> = items
            .iter()
            .zip(&msgs)
            .map(|(it, msg)| !it.stored || seen.insert(msg.seq))
            .collect();
        // Each forwarded message is encoded once, for both of its records.
        let encoded: Vec<Option<Vec<u8>>> = msgs
            .iter()
            .zip(&forward)
            .map(|(msg, fwd)| fwd.then(|| msg.encode_to_vec()))
            .collect();
        let mut records = self.mongo_records(&conv, &items, &msgs, &encoded);
        drop(msgs);
        let mongo_records = records.len();
        // The batch's `toPush` values are consecutive slices of one buffer:
        // one allocation per batch instead of two per message (the value
        // and, once a producer shares it, its reference count).
        let mut push_buf = BytesMut::with_capacity(
            encoded
                .iter()
                .flatten()
                .map(|body| push_record_len(body, &conv))
                .sum(),
        );
        for (it, body) in items.iter().zip(&encoded) {
            if let Some(body) = body {
                put_push_record(body, &conv, &mut push_buf);
                records.push(OutRecord {
                    topic: self.cfg.topics.to_push.clone(),
                    key: it.key.clone(),
                    value: push_buf.split().freeze(),
                    headers: it.headers.clone(),
                });
            }
        }
        self.produce_all(&conv, records).await?;
        Metrics::add(&m.mongo_records_produced, mongo_records as u64);
        Metrics::add(
            &m.push_produced,
            (forward.iter().filter(|f| **f).count()) as u64,
        );
        Metrics::add(&m.transfer_batches, 1);
        Some(())
    }

    /// Produces `records` in order and waits until every one is
    /// acknowledged, re-sending (in order) only those whose acknowledgement
    /// failed. Under the log's no-gap rule a failed record either is in the
    /// log or nothing after it is, so re-sending keeps first occurrences in
    /// order; re-sending only failures makes large batches converge.
    async fn produce_all(&self, conv: &str, records: Vec<OutRecord>) -> Option<()> {
        let d = &self.deps;
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut retry = Retrier::new(&self.cfg.backoff);
        loop {
            let acks: Vec<_> = pending
                .iter()
                .map(|i| d.producer.send(records[*i].clone()))
                .collect();
            let results = futures::future::join_all(acks).await;
            let mut failed = Vec::new();
            let mut first_error = None;
            for (i, r) in pending.iter().zip(results) {
                if let Err(e) = r {
                    failed.push(*i);
                    first_error.get_or_insert(e);
                }
            }
            let Some(e) = first_error else {
                return Some(());
            };
            if self.cfg.weaknesses.give_up_on_failure {
                return None;
            }
            Metrics::add(&d.metrics.retries, 1);
            tracing::warn!(
                conversation = %conv, failed = failed.len(), error = %e,
                attempt = retry.attempts + 1, "produce failed; re-sending the failed records"
            );
            pending = failed;
            retry.wait(d.clock.as_ref(), d.rng.as_ref()).await;
        }
    }

    /// `toMongo` records for the stored, forwarded messages (those with an
    /// encoding in `encoded`): runs of contiguous seqs (what OpenIM's
    /// persistence checks), each split so the record stays under the
    /// producer's limit.
    fn mongo_records(
        &self,
        conv: &str,
        items: &[Box<TransferItem>],
        msgs: &[MsgData],
        encoded: &[Option<Vec<u8>>],
    ) -> Vec<OutRecord> {
        let limit = self
            .deps
            .producer
            .max_record_bytes()
            .saturating_sub(self.cfg.envelope_margin_bytes)
            .max(1);
        /// One message of a run.
        struct Entry<'a> {
            key: &'a Bytes,
            seq: i64,
            operation_id: std::borrow::Cow<'a, str>,
            body: &'a [u8],
        }
        let mut out = Vec::new();
        let mut run: Vec<Entry<'_>> = Vec::new();
        let mut run_bytes = 0usize;
        let flush = |run: &mut Vec<Entry<'_>>, out: &mut Vec<OutRecord>| {
            let Some(first) = run.first() else {
                return;
            };
            let ctx = MsgContext::aggregate(run.iter().map(|e| e.operation_id.as_ref()));
            let value = encode_mongo_record(first.seq - 1, conv, run.iter().map(|e| e.body));
            out.push(OutRecord {
                topic: self.cfg.topics.to_mongo.clone(),
                key: first.key.clone(),
                value: Bytes::from(value),
                headers: ctx.to_headers().into(),
            });
            run.clear();
        };
        for ((it, msg), body) in items.iter().zip(msgs).zip(encoded) {
            let Some(body) = body.as_deref().filter(|_| it.stored) else {
                continue;
            };
            let operation_id = it.operation_id();
            let size = body.len() + 8 + operation_id.len() + 1;
            let contiguous = run.last().is_some_and(|prev| prev.seq + 1 == msg.seq);
            // Within our own persistence consumer's limits too.
            let full = run.len() >= self.cfg.limits.messages_per_record
                || run_bytes + size > limit.min(self.cfg.limits.record_bytes);
            if !run.is_empty() && (!contiguous || full) {
                flush(&mut run, &mut out);
                run_bytes = 0;
            }
            run.push(Entry {
                key: &it.key,
                seq: msg.seq,
                operation_id,
                body,
            });
            run_bytes += size;
        }
        flush(&mut run, &mut out);
        out
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Handler for Transfer<C> {
    type Item = TransferItem;

    fn decode(&self, record: &Record) -> Result<Vec<(ConvKey, Box<TransferItem>)>, Rejection> {
        Metrics::add(&self.deps.metrics.records_in, 1);
        // A message must fit, with its envelope, into the records we
        // produce and into what our persistence consumer accepts.
        let limit = self
            .deps
            .producer
            .max_record_bytes()
            .min(self.cfg.limits.record_bytes)
            .saturating_sub(self.cfg.envelope_margin_bytes);
        if record.value.len() > limit {
            return Err(Rejection(format!(
                "over limit: record of {} bytes cannot be forwarded under the {} byte limit \
                 (the smaller of maxRecordBytes and producerMaxRecordBytes, less {} bytes of envelope)",
                record.value.len(),
                limit,
                self.cfg.envelope_margin_bytes
            )));
        }
        // The value's size was checked just above, against a stricter bound.
        self.cfg.limits.check_headers(&record.headers)?;
        let msg = scan(record.value.as_ref())
            .map_err(|e| Rejection(format!("value is not an sdkws.MsgData: {e}")))?;
        self.cfg.limits.check_sizes(&msg.sizes, msg.client_msg_id)?;
        Metrics::add(&self.deps.metrics.msgs_in, 1);
        let mut receipt = None;
        if msg.content_type == content::HAS_READ_RECEIPT {
            match receipt::parse(msg.content) {
                Ok(r) => receipt = r.map(Box::new),
                // OpenIM stores such a message and only skips the read seq.
                Err(e) => tracing::warn!(
                    partition = record.partition, offset = record.offset, error = %e,
                    "read receipt content unusable; message kept, read seq not updated"
                ),
            }
        }
        let parties = Parties {
            session_type: msg.session_type,
            send_id: msg.send_id,
            recv_id: msg.recv_id,
            group_id: msg.group_id,
        };
        let plans = plan(parties, |k| msg.option(k)).map_err(|e| Rejection(e.to_string()))?;
        // OpenIM's producers always write exactly the four headers in order;
        // then we forward them as they are, else we write them afresh.
        let canonical = record.headers.len() == HEADER_KEYS.len()
            && record
                .headers
                .iter()
                .zip(HEADER_KEYS)
                .all(|((k, _), want)| k == want);
        let headers: Arc<[Header]> = if canonical {
            record.headers.clone()
        } else {
            MsgContext::from_headers(&record.headers)
                .to_headers()
                .into()
        };
        Ok(plans
            .into_iter()
            .map(|p| {
                let conv: ConvKey = Arc::from(p.conversation_id.as_str());
                let item = Box::new(TransferItem {
                    value: record.value.clone(),
                    role: p.role,
                    stored: p.stored,
                    chat: p.chat,
                    key: record.key.clone(),
                    headers: headers.clone(),
                    receipt: receipt.take(),
                });
                (conv, item)
            })
            .collect())
    }

    fn process(
        self: Arc<Self>,
        conversation: ConvKey,
        items: Batch<TransferItem>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.process_batch(conversation, items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{MsgDataToMongoByMq, PushMsgDataToMq};

    fn msg(seq: i64) -> MsgData {
        let mut m = MsgData {
            send_id: "u1".into(),
            client_msg_id: format!("c{seq}"),
            seq,
            content: b"hello".to_vec(),
            ..Default::default()
        };
        m.options.insert("history".into(), true);
        m
    }

    #[test]
    fn hand_encoded_records_match_prost() {
        let small = msg(7);
        // Lengths past 127 take two varint bytes.
        let mut large = msg(8);
        large.content = vec![b'x'; 300];
        let long_conv = format!("sg_{}", "g".repeat(200));
        for m in [&small, &large] {
            for conv in ["si_a_b", "", &long_conv] {
                let expected = PushMsgDataToMq {
                    msg_data: Some(m.clone()),
                    conversation_id: conv.into(),
                }
                .encode_to_vec();
                let body = m.encode_to_vec();
                assert_eq!(encode_push_record(&body, conv), expected);
                assert_eq!(push_record_len(&body, conv), expected.len());
            }
        }
        let msgs = [msg(100), msg(101)];
        for (last, conv) in [(99, "sg_g"), (0, "sg_g"), (5, "")] {
            let expected = MsgDataToMongoByMq {
                last_seq: last,
                conversation_id: conv.into(),
                msg_data: msgs.to_vec(),
            }
            .encode_to_vec();
            let bodies: Vec<Vec<u8>> = msgs.iter().map(Message::encode_to_vec).collect();
            assert_eq!(
                encode_mongo_record(last, conv, bodies.iter().map(Vec::as_slice)),
                expected
            );
        }
    }

    #[test]
    fn the_operation_id_is_the_first_header_with_invalid_utf8_replaced() {
        let item = |value: &[u8]| TransferItem {
            value: Bytes::new(),
            role: Role::Whole,
            stored: true,
            chat: true,
            key: Bytes::new(),
            headers: Arc::from(vec![
                ("operationID".to_string(), value.to_vec()),
                ("connID".to_string(), b"c".to_vec()),
            ]),
            receipt: None,
        };
        for value in [
            &b"op-1"[..],
            b"",
            b"op\xff\xfe-2",
            "\u{e9}t\u{e9}".as_bytes(),
        ] {
            let it = item(value);
            assert_eq!(it.operation_id(), it.context().operation_id, "{value:?}");
        }
        assert_eq!(item(b"op\xff").operation_id(), "op\u{fffd}");
        assert!(matches!(
            item(b"op-1").operation_id(),
            std::borrow::Cow::Borrowed("op-1")
        ));
    }
}
