//! [`DocStore`] over MongoDB with the `mongodb` driver.
//!
//! Only operations both MongoDB 5+ and FerretDB v1 accept: `createIndexes`,
//! `findAndModify` with upsert, `update` and `insert`. No transactions, no
//! `bulkWrite`, no array filters or positional operators.
//!
//! Collections and documents are OpenIM's (reference §5.1, §7.2, §8):
//! - `seq {conversation_id, max_seq, min_seq}`, unique on `conversation_id`;
//! - `msg {doc_id, msgs: [100 × {msg, revoke, del_list, is_read}]}`, unique
//!   on `doc_id`;
//! - `seq_user {user_id, conversation_id, min_seq, max_seq, read_seq}`,
//!   unique on `(user_id, conversation_id)`;
//! - ours: the dedup ledger, one collection per dedup window
//!   `msgtransfer_dedup_<epoch>` (epoch = ms / window) of
//!   `{_id: "<len>:<conv>:<clientMsgID>", seq, at}`. Lookups read the current
//!   and the previous window's collection; older ones are dropped whole
//!   (FerretDB v1 has no TTL indexes, and a drop costs nothing on either).
//!
//! Primary keys: documents this service creates carry an `_id` derived from
//! their natural key (the `doc_id`, the `conversation_id`, or both IDs of a
//! read seq; see [`seq_user_id`]), and every write addresses them by `_id`
//! first. OpenIM never reads `_id` (its models have no such field), so this
//! changes nothing for it, but it matters on FerretDB v1 with SQLite: it
//! evaluates a filter on any other field by parsing every document of the
//! collection, and one on `_id` by comparing each document's `_id` only
//! (measured: an update by `doc_id` took 906 ms among 300 full buckets, by
//! `_id` 71 ms; both still grow with the collection there, unlike MongoDB).
//! Documents OpenIM created have an ObjectId `_id`; a write that misses by
//! `_id` and then hits the unique index of the natural key falls back to a
//! write by natural key, so those are found and updated as before.

use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};

use crate::domain::bucket::SLOTS_PER_DOC;
use crate::ports::BoxFuture;
use crate::ports::store::{DocStore, SlotWrite, StoreError};

/// MongoDB's "duplicate key" error code.
const DUPLICATE_KEY: i32 = 11000;

/// The ledger's collection name prefix.
pub const LEDGER_PREFIX: &str = "msgtransfer_dedup_";

/// The service's collections in one database.
#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
    msg: Collection<Document>,
    seq: Collection<Document>,
    seq_user: Collection<Document>,
    /// Length of one ledger collection's window, ms.
    ledger_window_ms: i64,
    /// The newest epoch whose older collections were dropped.
    swept_epoch: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Raises of one read seq take turns within this process (a key maps
    /// to one of these by hash): see `raise_read_seq`.
    read_seq_turns: std::sync::Arc<[tokio::sync::Mutex<()>; READ_SEQ_TURNS]>,
}

/// Stripes of [`MongoStore::read_seq_turns`].
const READ_SEQ_TURNS: usize = 64;

impl MongoStore {
    /// The store over `db` (OpenIM's default database is `openim_v3`).
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.clone(),
            msg: db.collection("msg"),
            seq: db.collection("seq"),
            seq_user: db.collection("seq_user"),
            ledger_window_ms: 24 * 3600 * 1000,
            swept_epoch: Default::default(),
            read_seq_turns: std::sync::Arc::new(std::array::from_fn(|_| {
                tokio::sync::Mutex::new(())
            })),
        }
    }

    /// The same store with ledger windows of `window_ms` (the dedup
    /// window; entries are then remembered for at least that long).
    pub fn with_ledger_window(mut self, window_ms: i64) -> Self {
        self.ledger_window_ms = window_ms.max(1);
        self
    }

    fn ledger(&self, epoch: i64) -> Collection<Document> {
        self.db.collection(&format!("{LEDGER_PREFIX}{epoch}"))
    }

    /// The names of the ledger's collections (filtered here: FerretDB v1
    /// may not filter `listCollections` by a pattern).
    async fn ledger_collections(&self) -> Result<Vec<String>, StoreError> {
        let mut names = self.db.list_collection_names().await.map_err(classify)?;
        names.retain(|n| n.starts_with(LEDGER_PREFIX));
        Ok(names)
    }

    /// Drops the ledger collections older than the previous window, once
    /// per window.
    async fn sweep_ledger(&self, epoch: i64) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.swept_epoch.load(Ordering::Relaxed) >= epoch {
            return Ok(());
        }
        for name in self.ledger_collections().await? {
            let old = name
                .strip_prefix(LEDGER_PREFIX)
                .and_then(|e| e.parse::<i64>().ok())
                .is_some_and(|e| e < epoch - 1);
            if old {
                self.db
                    .collection::<Document>(&name)
                    .drop()
                    .await
                    .map_err(classify)?;
            }
        }
        self.swept_epoch.fetch_max(epoch, Ordering::Relaxed);
        Ok(())
    }

    /// The recorded seq of each of `ids` in the ledger of `epoch`.
    async fn ledger_lookup(
        &self,
        epoch: i64,
        conversation_id: &str,
        ids: &[String],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let ledger = self.ledger(epoch);
        // One find by `_id` each: FerretDB v1 evaluates `_id` equality
        // without parsing every document, `$in` it may not.
        let finds = ids.iter().map(|id| {
            let ledger = ledger.clone();
            async move {
                let found = ledger
                    .find_one(doc! {"_id": ledger_id(conversation_id, id)})
                    .await
                    .map_err(classify)?;
                Ok::<_, StoreError>(
                    found
                        .and_then(|d| as_i64(d.get("seq")))
                        .map(|seq| (id.clone(), seq)),
                )
            }
        });
        Ok(futures::future::try_join_all(finds)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Connects to `uri` and uses `database`. The driver connects lazily;
    /// this sends a `ping` so that a wrong address fails here, at start-up.
    pub async fn connect(uri: &str, database: &str) -> Result<Self, StoreError> {
        let client = mongodb::Client::with_uri_str(uri)
            .await
            .map_err(|e| StoreError::Refused(format!("mongodb uri {uri:?}: {e}")))?;
        let db = client.database(database);
        db.run_command(doc! {"ping": 1}).await.map_err(classify)?;
        Ok(Self::new(&db))
    }

    async fn write_bucket_inner(
        &self,
        doc_id: String,
        slots: Vec<SlotWrite>,
    ) -> Result<(), StoreError> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut set = Document::new();
        let mut models = Vec::with_capacity(slots.len());
        for (i, m) in &slots {
            if *i >= SLOTS_PER_DOC as usize {
                return Err(StoreError::Refused(format!(
                    "slot {i} out of range in {doc_id}"
                )));
            }
            let model = bson::to_bson(&m.model())
                .map_err(|e| StoreError::Refused(format!("encoding a message: {e}")))?;
            set.insert(format!("msgs.{i}.msg"), model.clone());
            models.push((*i, model));
        }
        // Overwrite only `msgs.N.msg` of an existing bucket; create a
        // missing one whole. If the insert hits a unique index, either
        // another writer created the bucket between our two steps (the next
        // update by `_id` finds it) or OpenIM created it with its own `_id`
        // (found by `doc_id`).
        let set = doc! {"$set": set};
        for _ in 0..3 {
            let updated = self
                .msg
                .update_one(doc! {"_id": &doc_id}, set.clone())
                .await
                .map_err(classify)?;
            if updated.matched_count > 0 {
                return Ok(());
            }
            let mut msgs: Vec<Bson> = (0..SLOTS_PER_DOC).map(|_| empty_slot(Bson::Null)).collect();
            for (i, model) in &models {
                msgs[*i] = empty_slot(model.clone());
            }
            match self
                .msg
                .insert_one(doc! {"_id": &doc_id, "doc_id": &doc_id, "msgs": msgs})
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(classify(e)),
            }
            let legacy = self
                .msg
                .update_one(doc! {"doc_id": &doc_id}, set.clone())
                .await
                .map_err(classify)?;
            if legacy.matched_count > 0 {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "bucket {doc_id} neither updatable nor insertable"
        )))
    }
}

/// The `_id` of the read-seq document of `user_id` in `conversation_id`:
/// both IDs, the first with its length in front so that no two pairs share
/// one key (`"9:si_u1_u2:u1"`).
pub fn seq_user_id(user_id: &str, conversation_id: &str) -> String {
    format!("{}:{conversation_id}:{user_id}", conversation_id.len())
}

/// The `_id` of a ledger entry: the conversation with its length in front
/// (as [`seq_user_id`]), then the `clientMsgID`.
pub fn ledger_id(conversation_id: &str, client_msg_id: &str) -> String {
    format!(
        "{}:{conversation_id}:{client_msg_id}",
        conversation_id.len()
    )
}

/// A BSON number as an `i64` (Mongo and FerretDB may store any of these).
pub fn as_i64(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

fn empty_slot(msg: Bson) -> Bson {
    Bson::Document(doc! {
        "msg": msg,
        "revoke": Bson::Null,
        "del_list": Bson::Array(Vec::new()),
        "is_read": false,
    })
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == DUPLICATE_KEY)),
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        // FerretDB v1 answers a duplicate key in an upsert with a reply the
        // driver cannot parse (no `n`); the error then carries the raw
        // reply, whose message reads "E11000 ..." (hex 453131303030).
        _ => {
            let text = e.to_string();
            text.contains("E11000") || text.contains("453131303030")
        }
    }
}

/// Network trouble, timeouts and server-side transient states mean "may or
/// may not have happened, try again"; anything else is a refusal.
fn classify(e: mongodb::error::Error) -> StoreError {
    let transient = matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    ) || e.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
        || e.contains_label("TransientTransactionError");
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Refused(e.to_string())
    }
}

impl DocStore for MongoStore {
    fn ensure_indexes(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let unique = || IndexOptions::builder().unique(true).build();
            self.msg
                .create_index(
                    IndexModel::builder()
                        .keys(doc! {"doc_id": 1})
                        .options(unique())
                        .build(),
                )
                .await
                .map_err(classify)?;
            self.seq
                .create_index(
                    IndexModel::builder()
                        .keys(doc! {"conversation_id": 1})
                        .options(unique())
                        .build(),
                )
                .await
                .map_err(classify)?;
            self.seq_user
                .create_index(
                    IndexModel::builder()
                        .keys(doc! {"user_id": 1, "conversation_id": 1})
                        .options(unique())
                        .build(),
                )
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn reserve_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        block: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            // As OpenIM: $inc with upsert, read the value after and step
            // back by the block; by `_id` first, by `conversation_id` for a
            // document OpenIM created (see the module docs).
            let inc = doc! {"$inc": {"max_seq": block}};
            let mut found = None;
            for _ in 0..3 {
                let by_id = self
                    .seq
                    .find_one_and_update(
                        doc! {"_id": conversation_id},
                        doc! {
                            "$inc": {"max_seq": block},
                            "$setOnInsert": {"conversation_id": conversation_id, "min_seq": 0_i64},
                        },
                    )
                    .upsert(true)
                    .return_document(ReturnDocument::After)
                    .await;
                match by_id {
                    Ok(doc) => {
                        found = doc;
                        break;
                    }
                    Err(e) if is_duplicate_key(&e) => {}
                    Err(e) => return Err(classify(e)),
                }
                found = self
                    .seq
                    .find_one_and_update(doc! {"conversation_id": conversation_id}, inc.clone())
                    .return_document(ReturnDocument::After)
                    .await
                    .map_err(classify)?;
                if found.is_some() {
                    break;
                }
            }
            let after = found.ok_or_else(|| {
                StoreError::Unavailable(format!("seq of {conversation_id}: no document"))
            })?;
            let max = match after.get("max_seq") {
                Some(Bson::Int64(v)) => *v,
                Some(Bson::Int32(v)) => i64::from(*v),
                Some(Bson::Double(v)) => *v as i64,
                other => {
                    return Err(StoreError::Refused(format!(
                        "seq of {conversation_id}: max_seq is {other:?}"
                    )));
                }
            };
            Ok(max - block)
        })
    }

    fn write_bucket(
        &self,
        doc_id: String,
        slots: Vec<SlotWrite>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.write_bucket_inner(doc_id, slots))
    }

    fn record_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        entries: Vec<(String, i64)>,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StoreError>> {
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(Vec::new());
            }
            let epoch = now_ms / self.ledger_window_ms;
            self.sweep_ledger(epoch).await?;
            let docs: Vec<Document> = entries
                .iter()
                .map(|(id, seq)| {
                    doc! {"_id": ledger_id(conversation_id, id), "seq": *seq, "at": now_ms}
                })
                .collect();
            match self.ledger(epoch).insert_many(docs).ordered(false).await {
                Ok(_) => return Ok(Vec::new()),
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(classify(e)),
            }
            // Some were recorded before (a redelivery, or another instance):
            // read every entry back and compare.
            let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
            let recorded: std::collections::BTreeMap<String, i64> = self
                .ledger_lookup(epoch, conversation_id, &ids)
                .await?
                .into_iter()
                .collect();
            let mut conflicts = Vec::new();
            for (id, seq) in entries {
                match recorded.get(&id) {
                    Some(r) if *r == seq => {}
                    Some(r) => conflicts.push((id, *r)),
                    None => {
                        return Err(StoreError::Unavailable(format!(
                            "ledger entry {id} of {conversation_id} neither inserted nor found"
                        )));
                    }
                }
            }
            Ok(conflicts)
        })
    }

    fn recorded_seqs<'a>(
        &'a self,
        conversation_id: &'a str,
        client_msg_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<(String, i64)>, StoreError>> {
        Box::pin(async move {
            // The epoch is the caller's clock's; the store has none. Every
            // ledger collection still present is read, newest first: at
            // most the current and the previous window are kept.
            let names = self.ledger_collections().await?;
            let mut epochs: Vec<i64> = names
                .iter()
                .filter_map(|n| n.strip_prefix(LEDGER_PREFIX)?.parse().ok())
                .collect();
            epochs.sort_unstable_by(|a, b| b.cmp(a));
            let mut found: Vec<(String, i64)> = Vec::new();
            let mut missing = client_msg_ids;
            for epoch in epochs {
                if missing.is_empty() {
                    break;
                }
                let hits = self.ledger_lookup(epoch, conversation_id, &missing).await?;
                missing.retain(|id| !hits.iter().any(|(h, _)| h == id));
                found.extend(hits);
            }
            Ok(found)
        })
    }

    fn raise_read_seq<'a>(
        &'a self,
        user_id: &'a str,
        conversation_id: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // $max never moves the read seq backwards on MongoDB, where it is
            // atomic. FerretDB v1 applies it as read-modify-write, so of two
            // concurrent raises the lower can land last. Raises of one key
            // from this process therefore take turns; and every raise reads
            // the value back and raises again until it holds at least `seq`,
            // which repairs most overlaps with other processes (not all: a
            // lower write can still land after the read-back there).
            let stripe = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (user_id, conversation_id).hash(&mut h);
                (h.finish() % READ_SEQ_TURNS as u64) as usize
            };
            let _turn = self.read_seq_turns[stripe].lock().await;
            let raise = doc! {"$max": {"read_seq": seq}};
            let by_id_filter = doc! {"_id": seq_user_id(user_id, conversation_id)};
            let by_key_filter = doc! {"user_id": user_id, "conversation_id": conversation_id};
            for _ in 0..8 {
                let by_id = self
                    .seq_user
                    .update_one(
                        by_id_filter.clone(),
                        doc! {
                            "$max": {"read_seq": seq},
                            "$setOnInsert": {
                                "user_id": user_id,
                                "conversation_id": conversation_id,
                                "min_seq": 0_i64,
                                "max_seq": 0_i64,
                            },
                        },
                    )
                    .upsert(true)
                    .await;
                let filter = match by_id {
                    Ok(_) => &by_id_filter,
                    Err(e) if is_duplicate_key(&e) => {
                        // A document OpenIM created, with its own `_id`.
                        let legacy = self
                            .seq_user
                            .update_one(by_key_filter.clone(), raise.clone())
                            .await
                            .map_err(classify)?;
                        if legacy.matched_count == 0 {
                            continue;
                        }
                        &by_key_filter
                    }
                    Err(e) => return Err(classify(e)),
                };
                let now = self
                    .seq_user
                    .find_one(filter.clone())
                    .await
                    .map_err(classify)?
                    .and_then(|d| as_i64(d.get("read_seq")));
                if now.is_some_and(|v| v >= seq) {
                    return Ok(());
                }
            }
            Err(StoreError::Unavailable(format!(
                "read seq of {user_id} in {conversation_id} did not reach {seq}"
            )))
        })
    }
}
