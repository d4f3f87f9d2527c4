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

/// A message on its way into a bucket slot: the document Mongo stores
/// under `msgs.N.msg`, and the `sdkws.MsgData` bytes it was made from.
///
/// The bytes let a store keep a message in the form it arrived in (usually
/// a slice of the `toMongo` record, shared rather than copied) and rebuild
/// the document when it is read: the embedded store does, and so holds a
/// message in a few dozen bytes of its own instead of a tree of strings.
/// The two always agree: the document is made from the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMsg {
    model: MsgDataModel,
    encoded: Bytes,
}

impl SlotMsg {
    /// The slot message for `msg`, encoding it.
    pub fn encode(msg: MsgData) -> Self {
        let encoded = Bytes::from(msg.encode_to_vec());
        Self::decoded(msg, encoded)
    }

    /// The slot message for `msg`, which is what `encoded` decodes to (the
    /// caller decoded it already; checked in debug builds).
    pub fn decoded(msg: MsgData, encoded: Bytes) -> Self {
        debug_assert!(
            MsgData::decode(encoded.as_ref()).as_ref() == Ok(&msg),
            "SlotMsg: the message is not what its bytes decode to"
        );
        Self {
            model: MsgDataModel::from_owned(msg),
            encoded,
        }
    }

    /// The document for `msgs.N.msg`.
    pub fn model(&self) -> &MsgDataModel {
        &self.model
    }

    /// The `sdkws.MsgData` bytes the document was made from.
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
