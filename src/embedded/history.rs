//! Builds a checker [`History`] from the embedded backends' final state.
//!
//! Inputs are read back from the `toRedis` log itself (so producer
//! duplicates are included, in log order) and categorised with the same
//! rules the service uses; outputs come from the `toPush` and `toMongo`
//! logs, the store's buckets and the Redis keyspace.

use prost::Message;

use super::log::EmbeddedLog;
use std::collections::BTreeMap;

use super::redis::{Engine, Value};
use super::store::EmbeddedStore;
use crate::cache::RedisDump;
use crate::cache::dump::PREFIXES;
use crate::check::{History, Input, Seen};
use crate::domain::{bucket, cache_json, categorise, content, receipt};
use crate::pipeline::transfer::Topics;
use crate::ports::Record;
use crate::proto::{MsgData, MsgDataToMongoByMq, PushMsgDataToMq};

fn per_partition(
    records: Vec<Record>,
    mut f: impl FnMut(&Record, &mut Vec<Seen>),
) -> Vec<Vec<Seen>> {
    let mut out: Vec<Vec<Seen>> = Vec::new();
    for r in &records {
        let p = r.partition as usize;
        if out.len() <= p {
            out.resize_with(p + 1, Vec::new);
        }
        f(r, &mut out[p]);
    }
    out
}

/// The embedded keyspace's hashes under the checker's prefixes, in the
/// shape a real server's dump has.
pub fn dump(redis: &mut Engine, now_ms: i64) -> RedisDump {
    let mut out = RedisDump::default();
    for prefix in PREFIXES {
        for (key, value) in redis.scan_prefix(now_ms, prefix.as_bytes()) {
            let fields = match value {
                Value::Hash(h) => h.into_iter().collect(),
                Value::Str(_) => BTreeMap::new(),
            };
            out.hashes.insert(key, fields);
        }
    }
    out
}

fn field<'a>(fields: &'a BTreeMap<Vec<u8>, Vec<u8>>, name: &str) -> Option<&'a [u8]> {
    fields.get(name.as_bytes()).map(Vec::as_slice)
}

fn field_i64(fields: &BTreeMap<Vec<u8>, Vec<u8>>, name: &str) -> Option<i64> {
    std::str::from_utf8(field(fields, name)?).ok()?.parse().ok()
}

/// Adds what Redis holds (cache entries, max seqs, read seqs) to `h` and
/// returns how many keys are misplaced (a cache key whose seq disagrees
/// with the JSON inside, or a key that does not parse). Shared by
/// [`collect`] and by anything reading a real server back.
pub fn add_redis(h: &mut History, redis: &RedisDump) -> u64 {
    let mut misplaced = 0u64;
    for (key, fields) in redis.with_prefix("MSG_CACHE:") {
        let key = String::from_utf8_lossy(key);
        let parsed = key
            .rsplit_once(':')
            .and_then(|(c, s)| Some((c.to_string(), s.parse::<i64>().ok()?)));
        let ident = field(fields, "value").and_then(cache_json::decode_identity);
        match (parsed, ident) {
            (Some((conv, seq)), Some(id)) => {
                if id.seq != seq {
                    misplaced += 1;
                }
                h.cached.push(Seen {
                    conversation_id: conv,
                    client_msg_id: id.client_msg_id,
                    seq: id.seq,
                });
            }
            _ => misplaced += 1,
        }
    }
    for (key, fields) in redis.with_prefix("MALLOC_SEQ:") {
        let conv = String::from_utf8_lossy(key).into_owned();
        let curr = field_i64(fields, "CURR").unwrap_or(0);
        let max = h.max_seqs.entry(conv).or_insert(0);
        *max = (*max).max(curr);
    }
    for (key, fields) in redis.with_prefix("SEQ_USER_READ:") {
        let rest = String::from_utf8_lossy(key);
        let Some((conv, user)) = rest.rsplit_once(':') else {
            misplaced += 1;
            continue;
        };
        let read = field_i64(fields, "value").unwrap_or(0);
        h.read_seqs
            .push((user.to_string(), conv.to_string(), read, "redis"));
    }
    misplaced
}

/// The input messages of `toRedis` record values, in order, categorised
/// with the service's own rules. Values that do not decode or categorise
/// are skipped (they are the dead-letter topic's business).
pub fn inputs<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<Input> {
    let mut out = Vec::new();
    for v in values {
        let Ok(m) = MsgData::decode(v) else {
            continue;
        };
        // A read receipt raises its reader's read seq once per record, as
        // the service applies it (with the record's first unit).
        let mut receipt = if m.content_type == content::HAS_READ_RECEIPT {
            receipt::parse(&m.content)
                .ok()
                .flatten()
                .map(|r| (r.user_id, r.conversation_id, r.read_seq))
        } else {
            None
        };
        for u in categorise::categorise(m).unwrap_or_default() {
            out.push(Input {
                raises_read_of: (u.chat && u.stored).then(|| u.msg.send_id.clone()),
                receipt: receipt.take(),
                conversation_id: u.conversation_id,
                client_msg_id: u.msg.client_msg_id,
                stored: u.stored,
            });
        }
    }
    out
}

/// The message a `toPush` record value carries, if it decodes.
pub fn pushed(value: &[u8]) -> Option<Seen> {
    let p = PushMsgDataToMq::decode(value).ok()?;
    let m = p.msg_data.unwrap_or_default();
    Some(Seen {
        conversation_id: p.conversation_id,
        client_msg_id: m.client_msg_id,
        seq: m.seq,
    })
}

/// The messages a `toMongo` record value carries (none if it does not
/// decode).
pub fn persistence_record(value: &[u8]) -> Vec<Seen> {
    let Ok(rec) = MsgDataToMongoByMq::decode(value) else {
        return Vec::new();
    };
    rec.msg_data
        .into_iter()
        .map(|m| Seen {
            conversation_id: rec.conversation_id.clone(),
            client_msg_id: m.client_msg_id,
            seq: m.seq,
        })
        .collect()
}

/// Whether a message with `seq` is out of place in slot `slot` of bucket
/// `index`.
pub fn misplaced_slot(index: i64, slot: usize, seq: i64) -> bool {
    seq < 1 || bucket::doc_index(seq) != index || bucket::slot(seq) != slot
}

/// Collects the history of a run. Records that do not decode are skipped
/// here (they are the dead-letter topic's business); `misplaced` counts
/// slots and cache keys whose position disagrees with the seq inside.
pub fn collect(
    log: &EmbeddedLog,
    topics: &Topics,
    store: &EmbeddedStore,
    redis: &RedisDump,
) -> (History, u64) {
    let mut h = History::default();
    let mut misplaced = 0u64;
    let to_redis = log.records(&topics.to_redis);
    h.inputs = inputs(to_redis.iter().map(|r| r.value.as_ref()));
    h.pushes = per_partition(log.records(&topics.to_push), |r, out| {
        out.extend(pushed(&r.value));
    });
    h.persistence_records = per_partition(log.records(&topics.to_mongo), |r, out| {
        out.extend(persistence_record(&r.value));
    });
    store.for_each_msg(|doc_id, slot, m| {
        let Some((conv, index)) = bucket::parse_doc_id(doc_id) else {
            misplaced += 1;
            return;
        };
        if misplaced_slot(index, slot, m.seq) {
            misplaced += 1;
        }
        // The highest persisted seq counts as a max seq too (Redis may
        // have lost its `CURR`), as `audit` counts it.
        let max = h.max_seqs.entry(conv.to_string()).or_insert(0);
        *max = (*max).max(m.seq);
        h.persisted.push(Seen {
            conversation_id: conv.to_string(),
            client_msg_id: m.client_msg_id.clone(),
            seq: m.seq,
        });
    });
    misplaced += add_redis(&mut h, redis);
    for ((user, conv), read) in store.read_seqs() {
        h.read_seqs.push((user, conv, read, "mongo"));
    }
    h.read_seq_writes = store.read_seq_log();
    (h, misplaced)
}
