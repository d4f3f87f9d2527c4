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

use prost::Message;

use super::consumer::{ConvKey, Handler, Rejection};
use super::retry::{Backoff, Retrier};
use crate::domain::bucket;
use crate::domain::limits::Limits;
use crate::domain::model::MsgDataModel;
use crate::metrics::Metrics;
use crate::ports::{BoxFuture, DocStore, Record, Rng, SharedClock};
use crate::proto::{MsgData, MsgDataToMongoByMq};

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

    async fn process_batch(self: Arc<Self>, conv: ConvKey, items: Vec<MsgData>) {
        // Later copies of a seq win, as later writes would in Mongo.
        let mut buckets: BTreeMap<i64, BTreeMap<usize, Arc<MsgDataModel>>> = BTreeMap::new();
        for m in items {
            buckets
                .entry(bucket::doc_index(m.seq))
                .or_default()
                .insert(bucket::slot(m.seq), Arc::new(MsgDataModel::from_owned(m)));
        }
        Metrics::add(&self.deps.metrics.persist_batches, 1);
        for (index, slots) in buckets {
            let doc_id = format!("{conv}:{index}");
            let writes: Vec<_> = slots.into_iter().collect();
            let n = writes.len() as u64;
            let sent: Vec<i64> = writes.iter().map(|(_, m)| m.send_time).collect();
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
    type Item = MsgData;

    fn decode(&self, record: &Record) -> Result<Vec<(ConvKey, MsgData)>, Rejection> {
        Metrics::add(&self.deps.metrics.mongo_records_in, 1);
        self.limits
            .check_record(record.value.len(), &record.headers)?;
        let rec = MsgDataToMongoByMq::decode(record.value.as_ref())
            .map_err(|e| Rejection(format!("value is not a msg.MsgDataToMongoByMQ: {e}")))?;
        self.limits.check_count(rec.msg_data.len())?;
        for m in &rec.msg_data {
            self.limits.check_msg(m)?;
        }
        if rec.conversation_id.is_empty() {
            return Err(Rejection("conversationID is empty".into()));
        }
        if rec.msg_data.is_empty() {
            return Err(Rejection("msgData is empty".into()));
        }
        if let Some(bad) = rec.msg_data.iter().find(|m| m.seq < 1) {
            return Err(Rejection(format!(
                "message {} has seq {}",
                bad.client_msg_id, bad.seq
            )));
        }
        let conv: ConvKey = Arc::from(rec.conversation_id.as_str());
        Ok(rec
            .msg_data
            .into_iter()
            .map(|m| (conv.clone(), m))
            .collect())
    }

    fn process(
        self: Arc<Self>,
        conversation: ConvKey,
        items: Vec<MsgData>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.process_batch(conversation, items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_doc_ids_match_the_domain_rule() {
        assert_eq!(
            format!("c:{}", bucket::doc_index(101)),
            bucket::doc_id("c", 101)
        );
    }
}
