//! The simulated MongoDB: a host serving the embedded document store over
//! turmoil TCP, and the service-side [`DocStore`] that talks to it.
//!
//! The documents live in an [`EmbeddedStore`] that outlives the host's
//! software. An answer can be lost after the operation was carried out (the
//! `mongo_lost_reply` dial); the client then reports the outcome as unknown,
//! which the service must survive by retrying idempotent operations.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use msgtransfer::embedded::store::EmbeddedStore;
use msgtransfer::ports::store::SlotWrite;
use msgtransfer::ports::{BoxFuture, DocStore, StoreError};
use serde::{Deserialize, Serialize};

use crate::common::Faults;
use crate::rpc::{self, Client, Served, Session};

/// The store's port.
pub const PORT: u16 = 27017;

/// Requests: one per [`DocStore`] method.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MongoReq {
    /// `ensure_indexes`.
    EnsureIndexes,
    /// `reserve_seqs`.
    ReserveSeqs(String, i64),
    /// `write_bucket`.
    WriteBucket(String, Vec<SlotWrite>),
    /// `raise_read_seq`.
    RaiseReadSeq(String, String, i64),
    /// `record_seqs`.
    RecordSeqs(String, Vec<(String, i64)>, i64),
    /// `recorded_seqs`.
    RecordedSeqs(String, Vec<String>),
    /// Read a `read_seq` (the read-then-write mutant's first step).
    ReadSeq(String, String),
    /// Set a `read_seq`, lower or not (its second step).
    SetReadSeq(String, String, i64),
}

/// Answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MongoResp {
    /// Done.
    Ok,
    /// `reserve_seqs`'s previous `max_seq`.
    Seq(i64),
    /// Ledger entries.
    Entries(Vec<(String, i64)>),
    /// Refused.
    Refused(String),
}

/// Store state shared by all connections (and kept across restarts).
pub struct MongoHost {
    /// The documents.
    pub store: EmbeddedStore,
    faults: Arc<Faults>,
}

impl MongoHost {
    /// A host over `store`.
    pub fn new(store: EmbeddedStore, faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(Self { store, faults })
    }

    /// Serves the store on [`PORT`] until the host is crashed.
    pub async fn serve(self: Arc<Self>, idle_timeout: Duration) -> std::io::Result<()> {
        rpc::serve(PORT, idle_timeout, move || MongoSession {
            host: self.clone(),
        })
        .await
    }
}

struct MongoSession {
    host: Arc<MongoHost>,
}

fn refused(e: StoreError) -> MongoResp {
    MongoResp::Refused(e.to_string())
}

impl Session for MongoSession {
    type Q = MongoReq;
    type A = MongoResp;

    fn handle(&mut self, req: MongoReq) -> Pin<Box<dyn Future<Output = Served<MongoResp>> + '_>> {
        Box::pin(async move {
            let store = &self.host.store;
            let answer = match req {
                MongoReq::EnsureIndexes => store
                    .ensure_indexes()
                    .await
                    .map_or_else(refused, |_| MongoResp::Ok),
                MongoReq::ReserveSeqs(conv, block) => store
                    .reserve_seqs(&conv, block)
                    .await
                    .map_or_else(refused, MongoResp::Seq),
                MongoReq::WriteBucket(doc, slots) => store
                    .write_bucket(doc, slots)
                    .await
                    .map_or_else(refused, |_| MongoResp::Ok),
                MongoReq::RaiseReadSeq(user, conv, seq) => store
                    .raise_read_seq(&user, &conv, seq)
                    .await
                    .map_or_else(refused, |_| MongoResp::Ok),
                MongoReq::RecordSeqs(conv, entries, now) => store
                    .record_seqs(&conv, entries, now)
                    .await
                    .map_or_else(refused, MongoResp::Entries),
                MongoReq::RecordedSeqs(conv, ids) => store
                    .recorded_seqs(&conv, ids)
                    .await
                    .map_or_else(refused, MongoResp::Entries),
                MongoReq::ReadSeq(user, conv) => store
                    .read_seq(&user, &conv)
                    .map_or_else(refused, MongoResp::Seq),
                MongoReq::SetReadSeq(user, conv, seq) => store
                    .set_read_seq(&user, &conv, seq)
                    .map_or_else(refused, |_| MongoResp::Ok),
            };
            if self
                .host
                .faults
                .roll("mongo_lost_reply", |r| r.mongo_lost_reply)
            {
                Served::Drop
            } else {
                Served::Answer(answer)
            }
        })
    }
}

/// The service's [`DocStore`] over one connection to the store host.
pub struct RemoteStore {
    client: Client<MongoReq, MongoResp>,
    timeout: Duration,
    read_then_write: bool,
}

impl RemoteStore {
    /// Connects (lazily) to `addr`.
    pub fn spawn(addr: String, connect_timeout: Duration, timeout: Duration) -> Self {
        Self {
            client: Client::spawn(addr, None, connect_timeout),
            timeout,
            read_then_write: false,
        }
    }

    /// The same store raising read seqs as OpenIM does: read the value, and
    /// if it is lower, write the new one — two operations, so a concurrent
    /// raise in between can be overwritten by a lower value (the
    /// `read-then-write` mutant).
    pub fn read_then_write(mut self) -> Self {
        self.read_then_write = true;
        self
    }

    async fn ok(&self, req: MongoReq) -> Result<(), StoreError> {
        match self.call(req).await? {
            MongoResp::Ok => Ok(()),
            a => Err(unexpected(a)),
        }
    }

    async fn entries(&self, req: MongoReq) -> Result<Vec<(String, i64)>, StoreError> {
        match self.call(req).await? {
            MongoResp::Entries(e) => Ok(e),
            a => Err(unexpected(a)),
        }
    }

    async fn call(&self, req: MongoReq) -> Result<MongoResp, StoreError> {
        match rpc::answer(self.client.call(req, self.timeout)).await {
            Ok(MongoResp::Refused(m)) => Err(StoreError::Refused(m)),
            Ok(a) => Ok(a),
            Err(e) => Err(StoreError::Unavailable(e.0)),
        }
    }
}

fn unexpected(a: MongoResp) -> StoreError {
    StoreError::Refused(format!("unexpected answer {a:?}"))
}

impl DocStore for RemoteStore {
    fn ensure_indexes(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ok(MongoReq::EnsureIndexes))
    }

    fn reserve_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        block: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            match self
                .call(MongoReq::ReserveSeqs(conversation_id.into(), block))
                .await?
            {
                MongoResp::Seq(s) => Ok(s),
                a => Err(unexpected(a)),
            }
        })
    }

    fn write_bucket(
        &self,
        doc_id: String,
        slots: Vec<SlotWrite>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ok(MongoReq::WriteBucket(doc_id, slots)))
    }

    fn record_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        entries: Vec<(String, i64)>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StoreError>> {
        Box::pin(self.entries(MongoReq::RecordSeqs(
            conversation_id.into(),
            entries,
            now_ms,
        )))
    }

    fn recorded_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        client_msg_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StoreError>> {
        Box::pin(self.entries(MongoReq::RecordedSeqs(
            conversation_id.into(),
            client_msg_ids,
        )))
    }

    fn raise_read_seq<'a>(
        &'a self,
        user_id: &'a str,
        conversation_id: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (user, conv) = (user_id.to_string(), conversation_id.to_string());
            if !self.read_then_write {
                return self.ok(MongoReq::RaiseReadSeq(user, conv, seq)).await;
            }
            let current = match self
                .call(MongoReq::ReadSeq(user.clone(), conv.clone()))
                .await?
            {
                MongoResp::Seq(s) => s,
                a => return Err(unexpected(a)),
            };
            if current < seq {
                self.ok(MongoReq::SetReadSeq(user, conv, seq)).await?;
            }
            Ok(())
        })
    }
}
