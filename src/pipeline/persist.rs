//! The `toMongo` handler: persistence of stored messages into `msg` buckets.
//!
//! A record (`MsgDataToMongoByMQ`) is split into its messages, keyed by the
//! record's conversation. A batch of one conversation is grouped by bucket
//! and written with one write per bucket, each setting only `msgs.N.msg`
//! (or creating the bucket), so a redelivered record rewrites the same slots
//! with the same messages. Status "sending" becomes "sent" on the way in.
//! Records that do not decode, carry no messages or carry a seq below 1 are
//! refused whole (dead-letter topic) — OpenIM logs and skips them.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::bytes::{Buf, Bytes};
use prost::encoding::{DecodeContext, bytes, decode_key, int64, skip_field, string};

use super::consumer::{Batch, ConvKey, Handler, Rejection};
use super::retry::{Backoff, Retrier};
use crate::domain::bucket;
use crate::domain::limits::Limits;
use crate::metrics::Metrics;
use crate::ports::store::SlotMsg;
use crate::ports::{BoxFuture, DocStore, Record, Rng, SharedClock};
use crate::proto::scan::{MsgSizes, ScanError};

/// A `toMongo` record (`MsgDataToMongoByMQ`) as the persistence stage reads
/// it: the conversation, and each message as the bytes it came in (slices
/// of the record's value, not copies, so a store may keep them for the
/// price of a reference) with what [`scan`](crate::proto::scan::scan) read
/// from them. No message is decoded into a `MsgData`.
#[derive(Debug, Default, PartialEq)]
pub struct MongoRecord {
    /// `lastSeq` (field 1).
    pub last_seq: i64,
    /// `conversationID` (field 2).
    pub conversation_id: String,
    /// `msgData` (field 3): each message, and its field sizes.
    pub msgs: Vec<(SlotMsg, MsgSizes)>,
}

impl MongoRecord {
    /// Reads `value` as prost decodes `MsgDataToMongoByMq` (same
    /// acceptance: unknown fields skipped, a repeated scalar's last value
    /// kept, every message checked as `MsgData::decode` checks it).
    pub fn decode(value: &Bytes) -> Result<Self, ScanError> {
        let mut out = Self {
            msgs: Vec::with_capacity(count_messages(value)),
            ..Self::default()
        };
        let mut buf = value.clone();
        while buf.has_remaining() {
            let (tag, wire_type) = decode_key(&mut buf)?;
            let ctx = DecodeContext::default();
            match tag {
                1 => int64::merge(wire_type, &mut out.last_seq, &mut buf, ctx)?,
                2 => string::merge(wire_type, &mut out.conversation_id, &mut buf, ctx)?,
                3 => {
                    // Read from a `Bytes`, the slice is shared, not copied.
                    let mut body = Bytes::new();
                    bytes::merge(wire_type, &mut body, &mut buf, ctx)?;
                    out.msgs.push(SlotMsg::from_bytes(body)?);
                }
                _ => skip_field(wire_type, tag, &mut buf, ctx)?,
            }
        }
        Ok(out)
    }
}

/// How many `msgData` fields `value` holds, to size the vector once: a
/// record carries up to a few hundred messages of several hundred bytes
/// each, and growing the vector by doubling would move them all several
/// times. Walks the keys and skips the bodies; anything malformed ends the
/// count early (the real decode then reports the error).
fn count_messages(value: &Bytes) -> usize {
    let mut buf = value.as_ref();
    let mut n = 0;
    while buf.has_remaining() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else {
            break;
        };
        n += usize::from(tag == 3);
        if skip_field(wire_type, tag, &mut buf, DecodeContext::default()).is_err() {
            break;
        }
    }
    n
}

/// The backends of the persistence stage.
pub struct PersistDeps {
    /// Mongo.
    pub store: Arc<dyn DocStore>,
    /// Time.
    pub clock: SharedClock,
    /// Randomness (jitter).
    pub rng: Arc<dyn Rng>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The `toMongo` handler.
pub struct Persist {
    deps: PersistDeps,
    backoff: Backoff,
    limits: Limits,
}

impl Persist {
    /// A handler over `deps`, holding every record to `limits`.
    pub fn new(deps: PersistDeps, backoff: Backoff, limits: Limits) -> Self {
        Self {
            deps,
            backoff,
            limits,
        }
    }

    async fn process_batch(self: Arc<Self>, conv: ConvKey, items: Batch<SlotMsg>) {
        // Later copies of a seq win, as later writes would in Mongo.
        let mut buckets: BTreeMap<i64, BTreeMap<usize, Arc<SlotMsg>>> = BTreeMap::new();
        for m in items {
            let seq = m.seq();
            buckets
                .entry(bucket::doc_index(seq))
                .or_default()
                .insert(bucket::slot(seq), Arc::from(m));
        }
        Metrics::add(&self.deps.metrics.persist_batches, 1);
        for (index, slots) in buckets {
            let doc_id = format!("{conv}:{index}");
            let writes: Vec<_> = slots.into_iter().collect();
            let n = writes.len() as u64;
            let sent: Vec<i64> = writes.iter().map(|(_, m)| m.send_time()).collect();
            let mut retry = Retrier::new(&self.backoff);
            loop {
                // A retry needs the writes again: the clone shares the messages.
                match self
                    .deps
                    .store
                    .write_bucket(doc_id.clone(), writes.clone())
                    .await
                {
                    Ok(()) => {
                        Metrics::add(&self.deps.metrics.msg_insert_mongo_success_total, 1);
                        Metrics::add(&self.deps.metrics.msgs_persisted, n);
                        let now = self.deps.clock.now_ms();
                        for t in &sent {
                            // Saturating: `sendTime` comes from the sender
                            // and may be anything (fuzzing found i64::MIN).
                            self.deps
                                .metrics
                                .e2e_latency
                                .observe_ms(now.saturating_sub(*t));
                        }
                        break;
                    }
                    Err(e) => {
                        Metrics::add(&self.deps.metrics.msg_insert_mongo_failed_total, 1);
                        Metrics::add(&self.deps.metrics.retries, 1);
                        tracing::warn!(doc_id = %doc_id, error = %e, "bucket write failed; retrying");
                        retry
                            .wait(self.deps.clock.as_ref(), self.deps.rng.as_ref())
                            .await;
                    }
                }
            }
        }
    }
}

impl Handler for Persist {
    type Item = SlotMsg;

    fn decode(&self, record: &Record) -> Result<Vec<(ConvKey, Box<SlotMsg>)>, Rejection> {
        Metrics::add(&self.deps.metrics.mongo_records_in, 1);
        self.limits
            .check_record(record.value.len(), &record.headers)?;
        let rec = MongoRecord::decode(&record.value)
            .map_err(|e| Rejection(format!("value is not a msg.MsgDataToMongoByMQ: {e}")))?;
        self.limits.check_count(rec.msgs.len())?;
        for (m, sizes) in &rec.msgs {
            self.limits.check_sizes(sizes, m.client_msg_id())?;
        }
        if rec.conversation_id.is_empty() {
            return Err(Rejection("conversationID is empty".into()));
        }
        if rec.msgs.is_empty() {
            return Err(Rejection("msgData is empty".into()));
        }
        if let Some((bad, _)) = rec.msgs.iter().find(|(m, _)| m.seq() < 1) {
            return Err(Rejection(format!(
                "message {} has seq {}",
                bad.client_msg_id(),
                bad.seq()
            )));
        }
        let conv: ConvKey = Arc::from(rec.conversation_id.as_str());
        Ok(rec
            .msgs
            .into_iter()
            .map(|(m, _)| (conv.clone(), Box::new(m)))
            .collect())
    }

    fn process(
        self: Arc<Self>,
        conversation: ConvKey,
        items: Batch<SlotMsg>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.process_batch(conversation, items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;
    use prost::Message;

    use crate::proto::{MsgData, MsgDataToMongoByMq};

    /// What prost makes of `value`, and what [`MongoRecord::decode`] does,
    /// in one shape: `None` when it is refused.
    fn both(value: &[u8]) -> (Option<MsgDataToMongoByMq>, Option<MsgDataToMongoByMq>) {
        let ours = MongoRecord::decode(&Bytes::copy_from_slice(value))
            .ok()
            .map(|r| MsgDataToMongoByMq {
                last_seq: r.last_seq,
                conversation_id: r.conversation_id,
                msg_data: r
                    .msgs
                    .iter()
                    .map(|(m, sizes)| {
                        let decoded = MsgData::decode(m.encoded().as_ref()).unwrap();
                        assert_eq!(m.seq(), decoded.seq);
                        assert_eq!(m.send_time(), decoded.send_time);
                        assert_eq!(m.client_msg_id(), decoded.client_msg_id);
                        assert_eq!(sizes, &MsgSizes::of(&decoded));
                        decoded
                    })
                    .collect(),
            });
        (MsgDataToMongoByMq::decode(value).ok(), ours)
    }

    fn msg(seq: i64, id: &str) -> MsgData {
        MsgData {
            seq,
            client_msg_id: id.into(),
            content: b"hello".to_vec(),
            send_id: "u1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn record_decoding_agrees_with_prost_and_keeps_each_message_bytes() {
        let rec = MsgDataToMongoByMq {
            last_seq: 6,
            conversation_id: "si_u1_u2".into(),
            msg_data: vec![msg(7, "a"), msg(8, "b")],
        };
        let value = Bytes::from(rec.encode_to_vec());
        let ours = MongoRecord::decode(&value).unwrap();
        assert_eq!(ours.last_seq, 6);
        assert_eq!(ours.conversation_id, "si_u1_u2");
        assert_eq!(ours.msgs.len(), 2);
        // Sized once, by counting the messages first.
        assert_eq!(ours.msgs.capacity(), 2);
        for ((m, _), want) in ours.msgs.iter().zip(&rec.msg_data) {
            assert_eq!(m.seq(), want.seq);
            assert_eq!(m.client_msg_id(), want.client_msg_id);
            let body = m.encoded();
            assert_eq!(body.as_ref(), want.encode_to_vec().as_slice());
            // A slice of the record, not a copy.
            let at = body.as_ptr() as usize - value.as_ptr() as usize;
            assert!(at < value.len());
        }
        // Refused alike: truncated, a wrong wire type, bad UTF-8.
        let full = rec.encode_to_vec();
        for bad in [
            full[..full.len() - 1].to_vec(),
            vec![0x0a, 0x01, 0x00],
            vec![0x12, 0x01, 0xff],
            vec![0x1a, 0x05, 0x01],
        ] {
            assert_eq!(both(&bad), (None, None), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn record_decoding_agrees_with_prost_on_any_bytes(
            value in proptest::collection::vec(any::<u8>(), 0..64),
            seqs in proptest::collection::vec(1i64..1000, 0..4),
            cut in any::<prop::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let (theirs, ours) = both(&value);
            prop_assert_eq!(theirs, ours);
            // Valid records, cut anywhere or with junk after them.
            let rec = MsgDataToMongoByMq {
                last_seq: seqs.first().copied().unwrap_or(0) - 1,
                conversation_id: "sg_g1".into(),
                msg_data: seqs.iter().map(|s| msg(*s, &format!("m{s}"))).collect(),
            };
            let full = rec.encode_to_vec();
            prop_assert_eq!(count_messages(&Bytes::from(full.clone())), seqs.len());
            let (theirs, ours) = both(&full);
            prop_assert_eq!(theirs.as_ref(), Some(&rec));
            prop_assert_eq!(ours.as_ref(), Some(&rec));
            let (theirs, ours) = both(&full[..cut.index(full.len() + 1)]);
            prop_assert_eq!(theirs, ours);
            let mut long = full.clone();
            long.extend(&junk);
            let (theirs, ours) = both(&long);
            prop_assert_eq!(theirs, ours);
        }
    }

    #[test]
    fn bucket_doc_ids_match_the_domain_rule() {
        assert_eq!(
            format!("c:{}", bucket::doc_index(101)),
            bucket::doc_id("c", 101)
        );
    }
}
