//! The document store (MongoDB), reduced to the operations we use.
//!
//! Each method is one Mongo operation (or one with a fallback) on OpenIM's
//! collections (reference §5.1, §7.2, §8):
//! - `seq`: `{conversation_id, max_seq, min_seq}`, unique on
//!   `conversation_id`; `reserve_seqs` is `findOneAndUpdate` with `$inc`,
//!   upsert;
//! - `msg`: buckets `{doc_id, msgs: [100 × {msg, revoke, del_list, is_read}]}`,
//!   unique on `doc_id`; `write_bucket` sets `msgs.N.msg` of existing slots
//!   and creates a missing bucket whole, so a redelivered write is harmless;
//! - `seq_user`: `{user_id, conversation_id, read_seq, …}`, unique on the
//!   pair; `raise_read_seq` is `$max` with upsert, atomic and never backwards;
//! - the dedup ledger (ours, not OpenIM's): which seq each `(conversation,
//!   clientMsgID)` got, so dedup survives a Redis that lost its data
//!   (`crate::cache`). Entries are remembered for at least one dedup window.

use bytes::Bytes;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::BoxFuture;
use crate::domain::model::MsgDataModel;
use crate::proto::MsgData;
use crate::proto::scan::{MsgSizes, ScanError, scan};

/// Store failures.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached, or the answer was lost. The write may
    /// or may not have happened.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the operation.
    #[error("store refused operation: {0}")]
    Refused(String),
}

/// A message on its way into a bucket slot: the `sdkws.MsgData` bytes it
/// travels as, and the fields the persistence stage reads from it.
///
/// The bytes are usually a slice of the `toMongo` record, shared rather
/// than copied. The document Mongo stores under `msgs.N.msg` is made from
/// them where it is needed ([`Self::model`]): the real store builds it for
/// each write, the embedded store keeps just the bytes and builds it when
/// read. So a message crosses the persistence stage without being decoded
/// into a tree of strings (see [`scan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMsg {
    encoded: Bytes,
    seq: i64,
    send_time: i64,
    /// Where `clientMsgID` sits in `encoded`: offset and length.
    id_at: (u32, u32),
}

impl SlotMsg {
    /// The slot message for `msg`, encoding it.
    pub fn encode(msg: MsgData) -> Self {
        Self::from_bytes(Bytes::from(msg.encode_to_vec()))
            .expect("an encoded message scans")
            .0
    }

    /// The slot message for `encoded`, with what [`scan`] read from it;
    /// `Err` if the bytes are not an `sdkws.MsgData`.
    pub fn from_bytes(encoded: Bytes) -> Result<(Self, MsgSizes), ScanError> {
        let s = scan(&encoded)?;
        let id_at = (s.client_msg_id_at as u32, s.client_msg_id.len() as u32);
        let (seq, send_time, sizes) = (s.seq, s.send_time, s.sizes);
        let msg = Self {
            seq,
            send_time,
            id_at,
            encoded,
        };
        Ok((msg, sizes))
    }

    /// `seq`.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// `sendTime`, ms.
    pub fn send_time(&self) -> i64 {
        self.send_time
    }

    /// `clientMsgID`.
    pub fn client_msg_id(&self) -> &str {
        let (at, n) = (self.id_at.0 as usize, self.id_at.1 as usize);
        // Checked to be UTF-8 by the scan that made `self`.
        std::str::from_utf8(&self.encoded[at..at + n]).unwrap_or_default()
    }

    /// The document for `msgs.N.msg`.
    pub fn model(&self) -> MsgDataModel {
        Self::model_of(&self.encoded).expect("a slot message's bytes scanned, so they decode")
    }

    /// The `sdkws.MsgData` bytes.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The document `encoded` makes, as [`Self::model`] of the slot message
    /// built from the same bytes; `None` if they are not an `sdkws.MsgData`.
    pub fn model_of(encoded: &Bytes) -> Option<MsgDataModel> {
        MsgData::decode(encoded.as_ref())
            .ok()
            .map(MsgDataModel::from_owned)
    }
}

/// On a wire (the simulator's), a slot message is its bytes; reading one
/// back scans them again.
impl Serialize for SlotMsg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.encoded.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SlotMsg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let encoded = Bytes::deserialize(d)?;
        Self::from_bytes(encoded)
            .map(|(m, _)| m)
            .map_err(serde::de::Error::custom)
    }
}

/// One slot write: the slot index (0..100) and the message for it.
pub type SlotWrite = (usize, std::sync::Arc<SlotMsg>);

/// The Mongo operations of the service.
pub trait DocStore: Send + Sync + 'static {
    /// Creates the collections' indexes (idempotent).
    fn ensure_indexes(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Adds `block` to the `max_seq` of `conversation_id` (creating the
    /// document at 0 if missing) and returns the value before the addition.
    fn reserve_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        block: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Writes `slots` into the bucket `doc_id`: `msgs.N.msg` of an existing
    /// bucket is overwritten (its other slot fields kept); a missing bucket is
    /// created with all 100 slots, empty except these.
    fn write_bucket(
        &self,
        doc_id: String,
        slots: Vec<SlotWrite>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Records in the dedup ledger that these messages of `conversation_id`
    /// got these seqs (`(clientMsgID, seq)`, at `now_ms`). An entry already
    /// recorded with the same seq is fine (a redelivery); one recorded with
    /// another seq is kept and returned as `(clientMsgID, recorded seq)`.
    fn record_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        entries: Vec<(String, i64)>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StoreError>>;

    /// The ledger's seqs of these `clientMsgID`s of `conversation_id`, as
    /// `(clientMsgID, seq)` for those recorded (within the last dedup
    /// window at least).
    fn recorded_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        client_msg_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StoreError>>;

    /// Raises `read_seq` of `(user_id, conversation_id)` to at least `seq`.
    fn raise_read_seq<'a>(
        &'a self,
        user_id: &'a str,
        conversation_id: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> MsgData {
        MsgData {
            send_id: "u1".into(),
            client_msg_id: "c-17".into(),
            seq: 17,
            send_time: 1_700_000_000_000,
            content: b"hi".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_slot_message_reads_its_fields_from_its_bytes() {
        let m = SlotMsg::encode(msg());
        assert_eq!(m.seq(), 17);
        assert_eq!(m.send_time(), 1_700_000_000_000);
        assert_eq!(m.client_msg_id(), "c-17");
        assert_eq!(m.model(), MsgDataModel::from_owned(msg()));
        assert_eq!(m.encoded().as_ref(), msg().encode_to_vec().as_slice());
        let anonymous = SlotMsg::encode(MsgData {
            client_msg_id: String::new(),
            ..msg()
        });
        assert_eq!(anonymous.client_msg_id(), "");
        assert!(SlotMsg::from_bytes(Bytes::from_static(&[0x0a, 0x01, 0xff])).is_err());
    }

    #[test]
    fn a_slot_message_crosses_a_wire_as_its_bytes() {
        let m = SlotMsg::encode(msg());
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<SlotMsg>(&text).unwrap(), m);
        // Bytes that are not a message are refused on the way in.
        assert!(serde_json::from_str::<SlotMsg>("[10,1,255]").is_err());
    }
}
