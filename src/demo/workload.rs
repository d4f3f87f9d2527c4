//! Realistic OpenIM traffic, generated from a seed.
//!
//! The mix follows what the msg RPC and OpenIM's notification sender put on
//! `toRedis`: single chats, read-group ("super group") chats and
//! notification chats; text and pictures (stored), typing indicators
//! (`history=false`, pushed only), read receipts (2200, a notification whose
//! content is `MarkAsReadTips` JSON), friend and group notifications, and
//! notification-chat messages with and without `isSendMsg` (which adds a
//! stored clone in the chat conversation). A few conversations are hot, so
//! batches of more than 100 messages per conversation occur. Keys, headers
//! and encodings are exactly OpenIM's.
//!
//! With a duplicate rate, a record is produced a second time a little later
//! (same key, so same partition), as a producer that retried after a lost
//! acknowledgement would.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::domain::context::MsgContext;
use crate::domain::options::key;
use crate::domain::{content, conversation, msg_from, session, status};
use crate::ports::OutRecord;
use crate::proto::{MarkAsReadTips, MsgData, OfflinePushInfo};

/// What to generate.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// Distinct messages.
    pub messages: u64,
    /// Conversations they are spread over.
    pub conversations: u64,
    /// Seed of everything.
    pub seed: u64,
    /// Fraction of records produced twice.
    pub duplicate_rate: f64,
    /// Topic to produce to.
    pub topic: Arc<str>,
    /// Wall time of the first message, ms (only written into messages).
    pub start_ms: i64,
}

/// Generated records, in produce order.
#[derive(Debug)]
pub struct Workload {
    /// Records to produce, duplicates included.
    pub records: Vec<OutRecord>,
    /// Message number of each record (`records[i]` carries message `index[i]`).
    pub index: Vec<u64>,
    /// Records that are second copies.
    pub duplicates: u64,
}

/// Where generated keys and values are written: consecutive slices of
/// shared 1 MiB buffers, the way a Kafka client hands out the records of a
/// fetch response. A record then costs its bytes and nothing else, and the
/// log's readers can share it without a per-record allocation.
#[derive(Default)]
struct Arena {
    buf: BytesMut,
}

impl Arena {
    const CHUNK: usize = 1 << 20;

    fn room(&mut self, len: usize) {
        if self.buf.capacity() < len {
            self.buf = BytesMut::with_capacity(Self::CHUNK.max(len));
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Bytes {
        self.room(bytes.len());
        self.buf.put_slice(bytes);
        self.buf.split().freeze()
    }

    fn put_msg(&mut self, m: &MsgData) -> Bytes {
        self.room(m.encoded_len());
        m.encode(&mut self.buf)
            .expect("room for the message was made above");
        self.buf.split().freeze()
    }
}

#[derive(Clone, Debug)]
enum Conv {
    Single(String, String),
    Group(String, Vec<String>),
    Notification(String),
}

/// The `clientMsgID` of message `n`; [`message_number`] reads it back.
pub fn client_msg_id(seed: u64, n: u64) -> String {
    format!("c{seed:x}-{n}")
}

/// The message number in a `clientMsgID` made by [`client_msg_id`].
pub fn message_number(client_msg_id: &str) -> Option<u64> {
    client_msg_id.rsplit_once('-')?.1.parse().ok()
}

fn opts(pairs: &[(&str, bool)]) -> BTreeMap<String, bool> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn text_content(rng: &mut ChaCha8Rng, n: u64) -> Vec<u8> {
    let words = rng.random_range(1..24);
    let mut s = format!("{{\"content\":\"message {n}");
    for _ in 0..words {
        s.push_str(" lorem");
    }
    s.push_str("\"}");
    s.into_bytes()
}

fn notification_content(detail: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "detail": detail })).unwrap_or_default()
}

/// Generates the workload of `spec`.
pub fn generate(spec: &WorkloadSpec) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let users = spec.conversations.max(2);
    let convs: Vec<Conv> = (0..spec.conversations.max(1))
        .map(|i| match i % 10 {
            0..=5 => {
                let a = i % users;
                let b = (i * 7 + 1) % users;
                let b = if a == b { (b + 1) % users } else { b };
                Conv::Single(format!("u{a}"), format!("u{b}"))
            }
            6..=8 => {
                let members = (0..rng.random_range(3..9))
                    .map(|_| format!("u{}", rng.random_range(0..users)))
                    .collect();
                Conv::Group(format!("g{i}"), members)
            }
            _ => Conv::Notification(format!("u{}", i % users)),
        })
        .collect();
    let hot = (spec.conversations / 100).max(1);
    // Stored chat messages so far per single chat: receipts never claim
    // more than was sent.
    let mut stored_in: Vec<i64> = vec![0; convs.len()];

    let mut slots: Vec<(u64, u64, OutRecord)> = Vec::new();
    let mut duplicates = 0;
    let mut arena = Arena::default();
    for n in 0..spec.messages {
        let ci = if rng.random_bool(0.2) {
            rng.random_range(0..hot)
        } else {
            rng.random_range(0..convs.len() as u64)
        } as usize;
        let mut m = MsgData {
            client_msg_id: client_msg_id(spec.seed, n),
            server_msg_id: format!("s{:x}-{n}", spec.seed),
            sender_platform_id: rng.random_range(1..6),
            msg_from: msg_from::USER,
            content_type: content::TEXT,
            send_time: spec.start_ms + n as i64,
            create_time: spec.start_ms + n as i64,
            status: status::SENDING,
            ..Default::default()
        };
        let roll: f64 = rng.random();
        match &convs[ci] {
            Conv::Single(a, b) => {
                let (from, to) = if rng.random_bool(0.5) { (a, b) } else { (b, a) };
                m.session_type = session::SINGLE;
                m.send_id = from.clone();
                m.recv_id = to.clone();
                m.sender_nickname = format!("nick {from}");
                if roll < 0.04 {
                    m.content_type = content::TYPING;
                    m.options = opts(&[(key::HISTORY, false), (key::PERSISTENT, false)]);
                    m.content = b"{\"msgTips\":\"typing\"}".to_vec();
                } else if roll < 0.08 && stored_in[ci] > 0 {
                    let read_to = rng.random_range(1..=stored_in[ci]);
                    let chat = conversation::chat_conversation_id(&m).unwrap_or_default();
                    let tips = MarkAsReadTips {
                        mark_as_read_user_id: from.clone(),
                        conversation_id: chat,
                        seqs: vec![read_to],
                        has_read_seq: (read_to - 1).max(0),
                    };
                    let tips_json = serde_json::json!({
                        "markAsReadUserID": tips.mark_as_read_user_id,
                        "conversationID": tips.conversation_id,
                        "seqs": tips.seqs,
                        "hasReadSeq": tips.has_read_seq,
                    });
                    m.msg_from = msg_from::SYSTEM;
                    m.content_type = content::HAS_READ_RECEIPT;
                    m.content = notification_content(&tips_json.to_string());
                    m.options = opts(&[
                        (key::NOT_NOTIFICATION, false),
                        (key::HISTORY, true),
                        (key::PERSISTENT, true),
                        (key::SEND_MSG, false),
                    ]);
                } else if roll < 0.10 {
                    m.msg_from = msg_from::SYSTEM;
                    m.content_type = content::FRIEND_APPLICATION_APPROVED;
                    m.content = notification_content("{\"fromToUserID\":{}}");
                    m.options = opts(&[
                        (key::NOT_NOTIFICATION, false),
                        (key::SEND_MSG, rng.random_bool(0.5)),
                        (key::HISTORY, true),
                        (key::PERSISTENT, true),
                    ]);
                    if is_clone(&m) {
                        stored_in[ci] += 1;
                    }
                } else {
                    if roll < 0.15 {
                        m.content_type = content::PICTURE;
                    }
                    m.content = text_content(&mut rng, n);
                    stored_in[ci] += 1;
                }
            }
            Conv::Group(g, members) => {
                m.session_type = session::READ_GROUP;
                m.group_id = g.clone();
                m.send_id = members[rng.random_range(0..members.len())].clone();
                if roll < 0.05 {
                    m.msg_from = msg_from::SYSTEM;
                    m.content_type = content::MEMBER_ENTER;
                    m.content = notification_content("{\"group\":{}}");
                    m.options = opts(&[
                        (key::NOT_NOTIFICATION, false),
                        (key::SEND_MSG, false),
                        (key::HISTORY, true),
                    ]);
                } else {
                    m.content = text_content(&mut rng, n);
                    if roll < 0.10 {
                        m.at_user_id_list = vec![members[0].clone()];
                    }
                }
            }
            Conv::Notification(user) => {
                m.session_type = session::NOTIFICATION;
                m.send_id = "imAdmin".into();
                m.recv_id = user.clone();
                m.msg_from = msg_from::SYSTEM;
                m.content_type = 1400;
                m.content = notification_content("{\"notificationName\":\"oa\"}");
                m.options = opts(&[
                    (key::NOT_NOTIFICATION, false),
                    (key::SEND_MSG, rng.random_bool(0.5)),
                    (key::OFFLINE_PUSH, true),
                    (key::HISTORY, true),
                ]);
                m.offline_push_info = Some(OfflinePushInfo {
                    title: "notice".into(),
                    ..Default::default()
                });
            }
        }
        let key = conversation::kafka_key(&m).unwrap_or_default();
        let ctx = MsgContext {
            operation_id: format!("op-{n}"),
            op_user_id: m.send_id.clone(),
            platform: m.sender_platform_id.to_string(),
            conn_id: String::new(),
        };
        let rec = OutRecord {
            topic: spec.topic.clone(),
            key: arena.put(key.as_bytes()),
            value: arena.put_msg(&m),
            headers: ctx.to_headers().into(),
        };
        // Positions leave room for duplicates to land a little later.
        let pos = n * 64;
        if spec.duplicate_rate > 0.0 && rng.random_bool(spec.duplicate_rate.min(1.0)) {
            let later = pos + rng.random_range(1..50) * 64 + 1;
            slots.push((later, n, rec.clone()));
            duplicates += 1;
        }
        slots.push((pos, n, rec));
    }
    slots.sort_by_key(|(pos, _, _)| *pos);
    let index = slots.iter().map(|(_, n, _)| *n).collect();
    let records = slots.into_iter().map(|(_, _, r)| r).collect();
    Workload {
        records,
        index,
        duplicates,
    }
}

fn is_clone(m: &MsgData) -> bool {
    m.options.get(key::SEND_MSG).copied().unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::categorise::categorise;

    fn spec(seed: u64, dup: f64) -> WorkloadSpec {
        WorkloadSpec {
            messages: 2000,
            conversations: 50,
            seed,
            duplicate_rate: dup,
            topic: Arc::from("toRedis"),
            start_ms: 1_764_000_000_000,
        }
    }

    #[test]
    fn same_seed_same_records() {
        let a = generate(&spec(5, 0.1));
        let b = generate(&spec(5, 0.1));
        let c = generate(&spec(6, 0.1));
        assert_eq!(a.records, b.records);
        assert_ne!(a.records, c.records);
    }

    #[test]
    fn mix_covers_every_kind_and_duplicates_follow_their_original() {
        let w = generate(&spec(1, 0.05));
        assert_eq!(w.records.len() as u64, 2000 + w.duplicates);
        assert!(w.duplicates > 50);
        let mut kinds = std::collections::BTreeSet::new();
        let mut first_seen = std::collections::BTreeMap::new();
        for (i, r) in w.records.iter().enumerate() {
            let m = MsgData::decode(r.value.as_ref()).unwrap();
            assert_eq!(conversation::kafka_key(&m).unwrap().as_bytes(), &r.key[..]);
            let units = categorise(m.clone()).unwrap();
            kinds.insert((
                m.session_type,
                m.content_type,
                units.len(),
                units.iter().all(|u| u.stored),
            ));
            let n = message_number(&m.client_msg_id).unwrap();
            assert_eq!(n, w.index[i]);
            if let Some(first) = first_seen.insert(n, i) {
                assert!(first < i, "a duplicate never precedes its original");
            }
        }
        let has = |st: i32, ct: i32| kinds.iter().any(|k| k.0 == st && k.1 == ct);
        assert!(
            has(1, content::TEXT) && has(1, content::TYPING) && has(1, content::HAS_READ_RECEIPT)
        );
        assert!(has(3, content::TEXT) && has(3, content::MEMBER_ENTER) && has(4, 1400));
        assert!(kinds.iter().any(|k| k.2 == 2), "isSendMsg clones occur");
        assert!(kinds.iter().any(|k| !k.3), "unstored messages occur");
    }
}
