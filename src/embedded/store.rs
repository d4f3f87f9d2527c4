//! An in-process document store with the Mongo semantics the service uses.
//!
//! Three collections, each keyed by its unique index: `seq` by
//! `conversation_id`, `msg` by `doc_id`, `seq_user` by
//! `(user_id, conversation_id)`. `reserve_seqs` is an atomic `$inc` with
//! upsert; `write_bucket` sets `msgs.N.msg` on an existing bucket and creates
//! a missing one with all 100 slots; `raise_read_seq` is `$max` with upsert.
//! The dedup ledger is kept as the real store keeps it: one table per
//! window (`now / window`), unique by `(conversation, clientMsgID)` within
//! it, the current and the previous window kept, older ones dropped.
//! A [`FaultPlan`](super::FaultPlan) can lose requests or answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::{Fault, FaultPlan};
use crate::domain::bucket::SLOTS_PER_DOC;
use crate::domain::model::MsgDataModel;
use crate::ports::store::{SlotMsg, SlotWrite};
use crate::ports::{BoxFuture, DocStore, StoreError};

/// One slot of a `msg` bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// The message, or none. Behind a pointer: a bucket has 100 slots and
    /// most are empty, so a slot should cost a pointer, not a whole message;
    /// shared with the write that put it there, which keeps it for retries.
    pub msg: Option<Arc<MsgDataModel>>,
    /// Users who deleted the message for themselves (kept across rewrites).
    pub del_list: Vec<String>,
    /// Read flag (kept across rewrites).
    pub is_read: bool,
}

/// A slot as the store keeps it: the message as the `sdkws.MsgData` bytes
/// it was written from (a shared slice of the record that carried it), so a
/// stored message costs the store a reference, not a copy. The document is
/// rebuilt from them when read. The per-user marks, which MsgTransfer never
/// writes, are behind a pointer that is nearly always empty: a slot costs
/// 40 bytes instead of 64, and the demo keeps two million of them.
#[derive(Clone, Debug, Default)]
struct KeptSlot {
    msg: Option<Bytes>,
    marks: Option<Box<SlotMarks>>,
}

/// The slot fields other services write (kept across rewrites).
#[derive(Clone, Debug, Default)]
struct SlotMarks {
    del_list: Vec<String>,
    is_read: bool,
}

impl KeptSlot {
    fn to_slot(&self) -> Slot {
        let marks = self.marks.as_deref();
        Slot {
            msg: self.msg.as_ref().map(|b| Arc::new(model_of(b))),
            del_list: marks.map(|m| m.del_list.clone()).unwrap_or_default(),
            is_read: marks.is_some_and(|m| m.is_read),
        }
    }
}

/// The document of kept bytes, which were checked when written.
fn model_of(encoded: &Bytes) -> MsgDataModel {
    SlotMsg::model_of(encoded).expect("the store keeps only messages that decoded when written")
}

/// A `seq` document.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqDoc {
    /// Highest seq ever reserved.
    pub max_seq: i64,
    /// Lowest visible seq.
    pub min_seq: i64,
}

/// Called after each slot write with the bucket's `doc_id` and the message.
pub type WriteObserver = Box<dyn Fn(&str, &SlotMsg) + Send + Sync>;

#[derive(Default)]
struct State {
    seq: FxHashMap<String, SeqDoc>,
    msg: FxHashMap<String, Vec<KeptSlot>>,
    seq_user: FxHashMap<(String, String), i64>,
    /// Ledger tables per epoch: conversation → clientMsgID → seq (nested,
    /// so recording a batch copies neither the conversation ID per entry
    /// nor the message IDs it is given).
    ledger: BTreeMap<i64, FxHashMap<String, FxHashMap<String, i64>>>,
    /// Every `seq_user.read_seq` value written, in order, when kept.
    read_seq_log: Option<Vec<(String, String, i64)>>,
    ops: u64,
}

impl State {
    fn write_read_seq(&mut self, user_id: &str, conversation_id: &str, seq: i64) {
        self.seq_user
            .insert((user_id.to_string(), conversation_id.to_string()), seq);
        if let Some(log) = &mut self.read_seq_log {
            log.push((user_id.to_string(), conversation_id.to_string(), seq));
        }
    }
}

/// The embedded store. Cloning gives another handle to the same data.
#[derive(Clone)]
pub struct EmbeddedStore {
    state: Arc<Mutex<State>>,
    faults: Option<Arc<FaultPlan>>,
    observer: Option<Arc<WriteObserver>>,
    ledger_window_ms: i64,
}

impl Default for EmbeddedStore {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            faults: None,
            observer: None,
            ledger_window_ms: 24 * 3600 * 1000,
        }
    }
}

impl EmbeddedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store with ledger windows of `window_ms` (the dedup
    /// window).
    pub fn with_ledger_window(mut self, window_ms: i64) -> Self {
        self.ledger_window_ms = window_ms.max(1);
        self
    }

    /// The same store, keeping every `read_seq` value it writes in order
    /// (see [`Self::read_seq_log`]).
    pub fn with_read_seq_log(self) -> Self {
        self.state.lock().read_seq_log = Some(Vec::new());
        self
    }

    /// Every `read_seq` value written, as `(user, conversation, value)` in
    /// write order (empty unless [`Self::with_read_seq_log`]).
    pub fn read_seq_log(&self) -> Vec<(String, String, i64)> {
        self.state.lock().read_seq_log.clone().unwrap_or_default()
    }

    /// The same store, failing as `plan` says.
    pub fn with_faults(mut self, plan: Arc<FaultPlan>) -> Self {
        self.faults = Some(plan);
        self
    }

    /// The same store, reporting every slot write to `observer`.
    pub fn with_observer(mut self, observer: WriteObserver) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    fn fault(&self) -> Option<Fault> {
        self.faults.as_ref().and_then(|f| f.store())
    }

    /// Runs `op` under the store's fault plan.
    fn run<T>(&self, op: impl FnOnce(&mut State) -> T) -> Result<T, StoreError> {
        match self.fault() {
            Some(Fault::Before) => Err(StoreError::Unavailable("injected: request lost".into())),
            Some(Fault::After) => {
                let mut st = self.state.lock();
                st.ops += 1;
                op(&mut st);
                Err(StoreError::Unavailable("injected: answer lost".into()))
            }
            None => {
                let mut st = self.state.lock();
                st.ops += 1;
                Ok(op(&mut st))
            }
        }
    }

    /// The `seq` document of a conversation.
    pub fn seq_doc(&self, conversation_id: &str) -> Option<SeqDoc> {
        self.state.lock().seq.get(conversation_id).copied()
    }

    /// Every bucket, sorted by `doc_id`.
    pub fn buckets(&self) -> BTreeMap<String, Vec<Slot>> {
        let st = self.state.lock();
        st.msg
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(KeptSlot::to_slot).collect()))
            .collect()
    }

    /// Calls `f` for every stored message with its bucket's `doc_id` and slot.
    pub fn for_each_msg(&self, mut f: impl FnMut(&str, usize, &MsgDataModel)) {
        let st = self.state.lock();
        let mut ids: Vec<&String> = st.msg.keys().collect();
        ids.sort();
        for id in ids {
            for (i, slot) in st.msg[id].iter().enumerate() {
                if let Some(m) = &slot.msg {
                    f(id, i, &model_of(m));
                }
            }
        }
    }

    /// Every `(user, conversation) → read_seq`, sorted.
    pub fn read_seqs(&self) -> BTreeMap<(String, String), i64> {
        let st = self.state.lock();
        st.seq_user.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The `read_seq` of `(user, conversation)`, 0 without a document.
    pub fn read_seq(&self, user_id: &str, conversation_id: &str) -> Result<i64, StoreError> {
        self.run(|st| {
            st.seq_user
                .get(&(user_id.to_string(), conversation_id.to_string()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Sets `read_seq` of `(user, conversation)` to `seq`, lower or not:
    /// OpenIM's write after its read (reference §7.2), which the simulator's
    /// read-then-write mutant puts back. The service only ever raises.
    pub fn set_read_seq(
        &self,
        user_id: &str,
        conversation_id: &str,
        seq: i64,
    ) -> Result<(), StoreError> {
        self.run(|st| st.write_read_seq(user_id, conversation_id, seq))
    }

    /// Every `conversation → max_seq`, sorted.
    pub fn max_seqs(&self) -> BTreeMap<String, i64> {
        let st = self.state.lock();
        st.seq.iter().map(|(k, v)| (k.clone(), v.max_seq)).collect()
    }

    /// Operations served so far (successful or answered with a lost reply).
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }
}

impl DocStore for EmbeddedStore {
    fn ensure_indexes(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Every collection is keyed by its unique index already.
        Box::pin(std::future::ready(Ok(())))
    }

    fn reserve_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        block: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        let r = self.run(|st| {
            let doc = st.seq.entry(conversation_id.to_string()).or_default();
            let before = doc.max_seq;
            doc.max_seq += block;
            before
        });
        Box::pin(std::future::ready(r))
    }

    fn write_bucket(
        &self,
        doc_id: String,
        slots: Vec<SlotWrite>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let observer = self.observer.clone();
        let r = self.run(|st| {
            if slots.iter().any(|(i, _)| *i >= SLOTS_PER_DOC as usize) {
                return Err(StoreError::Refused(format!(
                    "slot out of range in {doc_id}"
                )));
            }
            let bucket = st
                .msg
                .entry(doc_id.clone())
                .or_insert_with(|| vec![KeptSlot::default(); SLOTS_PER_DOC as usize]);
            for (i, m) in slots {
                if let Some(obs) = &observer {
                    obs(&doc_id, &m);
                }
                bucket[i].msg = Some(m.encoded().clone());
            }
            Ok(())
        });
        Box::pin(std::future::ready(r.and_then(|x| x)))
    }

    fn record_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        entries: Vec<(String, i64)>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StoreError>> {
        let epoch = now_ms / self.ledger_window_ms;
        let r = self.run(|st| {
            st.ledger.retain(|e, _| *e >= epoch - 1);
            let table = st.ledger.entry(epoch).or_default();
            let conv = match table.get_mut(conversation_id) {
                Some(conv) => conv,
                None => table.entry(conversation_id.to_string()).or_default(),
            };
            let mut conflicts = Vec::new();
            for (id, seq) in entries {
                match conv.entry(id) {
                    std::collections::hash_map::Entry::Occupied(e) => {
                        if *e.get() != seq {
                            conflicts.push((e.key().clone(), *e.get()));
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(seq);
                    }
                }
            }
            conflicts
        });
        Box::pin(std::future::ready(r))
    }

    fn recorded_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        client_msg_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StoreError>> {
        let r = self.run(|st| {
            client_msg_ids
                .into_iter()
                .filter_map(|id| {
                    let seq = st
                        .ledger
                        .values()
                        .rev()
                        .find_map(|t| t.get(conversation_id)?.get(&id))?;
                    Some((id, *seq))
                })
                .collect()
        });
        Box::pin(std::future::ready(r))
    }

    fn raise_read_seq<'a>(
        &'a self,
        user_id: &'a str,
        conversation_id: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let r = self.run(|st| {
            // As before the write log: a missing document counts as 0.
            let key = (user_id.to_string(), conversation_id.to_string());
            let current = st.seq_user.get(&key).copied();
            let raised = current.unwrap_or(0).max(seq);
            if current != Some(raised) {
                st.write_read_seq(user_id, conversation_id, raised);
            }
        });
        Box::pin(std::future::ready(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(seq: i64, id: &str) -> Arc<SlotMsg> {
        Arc::new(SlotMsg::encode(crate::proto::MsgData {
            seq,
            client_msg_id: id.into(),
            ..Default::default()
        }))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reserve_is_an_atomic_inc_returning_the_old_value() {
        let s = EmbeddedStore::new();
        assert_eq!(s.reserve_seqs("c", 51).await.unwrap(), 0);
        assert_eq!(s.reserve_seqs("c", 51).await.unwrap(), 51);
        assert_eq!(s.seq_doc("c").unwrap().max_seq, 102);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bucket_writes_create_then_overwrite_only_the_message() {
        let s = EmbeddedStore::new();
        s.write_bucket("c:0".into(), vec![(0, model(1, "a"))])
            .await
            .unwrap();
        s.state.lock().msg.get_mut("c:0").unwrap()[0].marks = Some(Box::new(SlotMarks {
            del_list: vec!["u9".into()],
            is_read: true,
        }));
        s.write_bucket("c:0".into(), vec![(0, model(1, "a2")), (5, model(6, "f"))])
            .await
            .unwrap();
        let b = &s.buckets()["c:0"];
        assert_eq!(b.len(), 100);
        assert_eq!(b[0].msg.as_ref().unwrap().client_msg_id, "a2");
        assert!(b[0].is_read, "other slot fields survive a rewrite");
        assert_eq!(b[0].del_list, ["u9"]);
        assert!(!b[5].is_read && b[5].del_list.is_empty());
        assert_eq!(b[5].msg.as_ref().unwrap().seq, 6);
        assert!(
            s.write_bucket("c:0".into(), vec![(100, model(1, "x"))])
                .await
                .is_err()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn read_seq_only_moves_up() {
        let s = EmbeddedStore::new();
        s.raise_read_seq("u", "c", 5).await.unwrap();
        s.raise_read_seq("u", "c", 3).await.unwrap();
        assert_eq!(s.read_seqs()[&("u".to_string(), "c".to_string())], 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn faults_after_the_work_still_do_the_work() {
        let plan = Arc::new(FaultPlan::new(1, 0.0, 1.0, 0.0));
        let s = EmbeddedStore::new().with_faults(plan);
        let mut done = 0;
        for _ in 0..20 {
            if s.reserve_seqs("c", 1).await.is_err() {
                done += 1;
            }
        }
        assert_eq!(done, 20, "every call fails");
        let max = s.seq_doc("c").map(|d| d.max_seq).unwrap_or(0);
        assert!(
            max > 0 && max < 20,
            "some failures happened after the work: {max}"
        );
    }
}
