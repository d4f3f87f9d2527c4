//! Everything the service keeps in Redis, written once against
//! `redis::aio::ConnectionLike`.
//!
//! The same code drives real Redis, the embedded model
//! (`crate::embedded::redis`) and the simulator's Redis over turmoil sockets.
//!
//! # Keys (OpenIM's, reference §5, §6, §7.2, plus our dedup table)
//! - `MALLOC_SEQ:<conv>`: hash `CURR` (last seq handed out), `LAST` (end of
//!   the block reserved in Mongo), `TIME` (ms of the last allocation), `LOCK`
//!   (token of a refill in progress; the key then has a 3 s TTL).
//! - `MSG_CACHE:<conv>:<seq>`: hash field `value` = Go-style JSON, 24 h.
//! - `SEQ_USER_READ:<conv>:<user>`: hash field `value` = decimal, 30 d.
//! - `{MALLOC_SEQ:<conv>}:DEDUP:<epoch>`: hash `clientMsgID → seq`. The hash
//!   tag is the whole `MALLOC_SEQ` key name, so in a Redis Cluster the dedup
//!   table lives in the same slot as the allocator and one script can touch
//!   both atomically. Epochs are `now / window`; lookups read the current and
//!   the previous epoch, so an entry is remembered for at least one window.
//!
//! # One round trip per conversation batch
//! [`assign`] runs `assign.lua`, which in one atomic step looks every message
//! up in the dedup table, allocates seqs for the new ones, records them,
//! writes every message to `MSG_CACHE` and raises the senders' read seqs.
//! Only when the cached block is exhausted (or missing) does it take
//! OpenIM's `LOCK`, return, and let us reserve a new block in Mongo
//! (`$inc max_seq`) before calling it again to install the block and finish.
//! Every seq handed out comes from a Mongo reservation, so seqs stay unique
//! across Redis restarts; the unused rest of a block is a gap, as in OpenIM.
//!
//! # Dedup that survives a Redis data loss
//! The dedup table lives in Redis, so a Redis that comes back empty (no
//! persistence, no surviving replica) would forget which messages already
//! have a seq, and a redelivery would get a second one. So every assignment
//! is also recorded in the store's ledger (`DocStore::record_seqs`) before
//! [`assign`] returns, i.e. before any seq is used. A refill that finds
//! `MALLOC_SEQ` gone while Mongo's `seq` document has history marks the
//! conversation suspect for one dedup window (`SUSPECT` in the hash); while
//! it is, the script asks for new messages to be looked up in the ledger
//! (`DocStore::recorded_seqs`) before they may get a seq, and a recorded
//! seq is given back. If the ledger already holds another seq for a message
//! (the loss raced with another instance), the ledger's seq wins and the
//! cache entry under ours is deleted.

pub mod dump;

pub use dump::RedisDump;

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::domain::conversation::block_size;
use crate::ports::{Clock, DocStore, Rng, StoreError};

/// Tunables of the Redis side. Defaults are OpenIM's TTLs and our dedup
/// window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long a `clientMsgID` keeps its seq for redeliveries (≥ this, < 2×).
    pub dedup_window_ms: i64,
    /// TTL of `MALLOC_SEQ:*` after an allocation (OpenIM: 365 days).
    pub malloc_ttl_s: i64,
    /// TTL of `MALLOC_SEQ:*` while a refill holds the lock (OpenIM: 3 s).
    pub lock_ttl_ms: i64,
    /// TTL of `MSG_CACHE:*` (OpenIM: 24 h).
    pub msg_cache_ttl_s: i64,
    /// TTL of `SEQ_USER_READ:*` (OpenIM: 30 days).
    pub read_seq_ttl_s: i64,
    /// First wait when another refill holds the lock.
    pub lock_wait_initial: Duration,
    /// Longest wait between lock checks.
    pub lock_wait_max: Duration,
    /// Lock checks before giving up with [`CacheError::LockTimeout`]
    /// (the caller retries the whole batch later).
    pub lock_wait_attempts: u32,
    /// Replicas that must hold an assignment before its seqs are used
    /// (`WAIT`); 0 waits for none. This is the failover fence: a replica
    /// promoted after the primary died has every seq handed out, so it
    /// cannot hand one out again.
    pub wait_replicas: u32,
    /// How long one `WAIT` may take; when fewer replicas confirm, the batch
    /// fails and is retried (its seqs come back from the dedup table).
    pub wait_timeout_ms: u64,
    /// The assign script writes `MSG_CACHE` and `SEQ_USER_READ` itself (one
    /// atomic step). False for Redis Cluster, where those keys live in other
    /// slots than the allocator's: they are written next, one command per
    /// key, each routed to its own node (`put.lua`).
    pub cache_in_script: bool,
    /// Keep the dedup ledger in the document store: every assignment is
    /// recorded there before its seqs are used, and after Redis lost a
    /// conversation's state, new messages are looked up there before they
    /// get a seq. Without it, dedup does not survive a Redis data loss.
    pub ledger: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            dedup_window_ms: 24 * 3600 * 1000,
            malloc_ttl_s: 365 * 24 * 3600,
            lock_ttl_ms: 3000,
            msg_cache_ttl_s: 24 * 3600,
            read_seq_ttl_s: 30 * 24 * 3600,
            lock_wait_initial: Duration::from_millis(5),
            lock_wait_max: Duration::from_millis(250),
            lock_wait_attempts: 40,
            wait_replicas: 0,
            wait_timeout_ms: 1000,
            cache_in_script: true,
            ledger: true,
        }
    }
}

/// Why [`assign`] failed. All variants are transient: the caller retries the
/// batch, and because the script is idempotent under dedup, a retry after an
/// unknown outcome gets the same seqs back.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis failed or the answer was lost.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Mongo block reservation failed.
    #[error("seq reservation: {0}")]
    Store(#[from] StoreError),
    /// Another refill held the lock for too long.
    #[error("MALLOC_SEQ lock of {0} held too long")]
    LockTimeout(String),
    /// The script answered something it never answers.
    #[error("unexpected reply from assign script: {0:?}")]
    Protocol(Vec<i64>),
    /// The ledger kept disagreeing with Redis about a message's seq.
    #[error("ledger of {0} kept disagreeing with the dedup table")]
    LedgerConflict(String),
    /// Fewer replicas than required confirmed the assignment in time.
    #[error("assignment reached {acked} of {wanted} replicas in time")]
    NotReplicated {
        /// Replicas that confirmed.
        acked: i64,
        /// Replicas required.
        wanted: u32,
    },
}

/// One message of a batch, as the script needs it.
#[derive(Clone, Debug)]
pub struct AssignItem<'a> {
    /// Dedup identity within the conversation; empty disables dedup.
    pub client_msg_id: &'a str,
    /// Whose read seq this message raises (chat conversations only).
    pub sender: Option<&'a str>,
    /// The cache JSON, written with the seq the caller expects this message
    /// to get (`predicted`), whose decimal digits start at byte `seq_at`.
    /// When the message gets another seq, those digits are replaced by it.
    pub json: &'a str,
    /// The seq written into `json`.
    pub predicted: i64,
    /// Where `predicted`'s digits start in `json`.
    pub seq_at: usize,
}

impl AssignItem<'_> {
    /// The cache JSON for `seq`: `json` itself when the prediction held.
    pub fn cache_json(&self, seq: i64) -> std::borrow::Cow<'_, str> {
        if seq == self.predicted {
            return std::borrow::Cow::Borrowed(self.json);
        }
        let digits = decimal_len(self.predicted);
        let (before, rest) = self.json.split_at(self.seq_at.min(self.json.len()));
        let after = rest.get(digits..).unwrap_or("");
        std::borrow::Cow::Owned(format!("{before}{seq}{after}"))
    }
}

/// How many characters `n` takes in decimal (with its sign).
fn decimal_len(n: i64) -> usize {
    let sign = usize::from(n < 0);
    let mut m = n.unsigned_abs();
    let mut len = 1;
    while m >= 10 {
        m /= 10;
        len += 1;
    }
    sign + len
}

/// The outcome of [`assign`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// `CURR` before this allocation (0 when nothing new was allocated).
    pub prev: i64,
    /// The seq of each message, in input order.
    pub seqs: Vec<i64>,
    /// Whether each message's seq was already known (a redelivery or a copy
    /// earlier in the batch) rather than freshly allocated.
    pub hits: Vec<bool>,
}

/// The assign script's source.
const ASSIGN_SOURCE: &str = include_str!("assign.lua");

/// One cache or read-seq write by itself (Redis Cluster).
static PUT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(include_str!("put.lua")));

/// Its SHA1, as EVALSHA wants it.
static ASSIGN_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(ASSIGN_SOURCE).get_hash().to_string());

/// Lock tokens for `MALLOC_SEQ` refills: a random prefix drawn once from the
/// injected RNG plus a counter, so every refill holds a token no other
/// holder has (OpenIM's Lua-generated token is effectively constant) without
/// drawing randomness on every call.
#[derive(Debug)]
pub struct TokenSource {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl TokenSource {
    /// A source whose tokens start with 128 random bits from `rng`.
    pub fn new(rng: &dyn Rng) -> Self {
        Self {
            prefix: rng.token(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A fresh token.
    pub fn token(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:x}", self.prefix)
    }
}

/// `MALLOC_SEQ:<conv>`.
pub fn malloc_key(conversation_id: &str) -> String {
    format!("MALLOC_SEQ:{conversation_id}")
}

/// `MSG_CACHE:<conv>:<seq>`.
pub fn msg_cache_key(conversation_id: &str, seq: i64) -> String {
    format!("MSG_CACHE:{conversation_id}:{seq}")
}

/// `SEQ_USER_READ:<conv>:<user>`.
pub fn read_seq_key(conversation_id: &str, user_id: &str) -> String {
    format!("SEQ_USER_READ:{conversation_id}:{user_id}")
}

/// The dedup hash of `conversation_id` for `epoch`.
pub fn dedup_key(conversation_id: &str, epoch: i64) -> String {
    format!("{{MALLOC_SEQ:{conversation_id}}}:DEDUP:{epoch}")
}

/// Refill state carried between the two script calls.
#[derive(Clone, Copy, Debug)]
struct Refill {
    mode: i64,
    base: i64,
    block: i64,
}

/// Assigns seqs to one batch of one conversation, caches the messages and
/// raises the senders' read seqs (see the module docs).
pub async fn assign<C: ConnectionLike + Clone + Send + Sync>(
    conn: &mut C,
    store: &dyn DocStore,
    clock: &dyn Clock,
    tokens: &TokenSource,
    cfg: &CacheConfig,
    conversation_id: &str,
    items: &[AssignItem<'_>],
) -> Result<Assignment, CacheError> {
    if items.is_empty() {
        return Ok(Assignment {
            prev: 0,
            seqs: Vec::new(),
            hits: Vec::new(),
        });
    }
    let mut senders: Vec<&str> = Vec::new();
    let sender_index: Vec<usize> = items
        .iter()
        .map(|it| match it.sender {
            None => 0,
            Some(s) => match senders.iter().position(|x| *x == s) {
                Some(p) => p + 1,
                None => {
                    senders.push(s);
                    senders.len()
                }
            },
        })
        .collect();
    let (first_predicted, predictions) = predictions(items, cfg.cache_in_script);
    let token = tokens.token();
    let mut refill: Option<Refill> = None;
    let mut lock_waits = 0u32;
    let mut wait = cfg.lock_wait_initial;
    // clientMsgID → seq from the ledger (0: not recorded), passed to the
    // script; and seqs of ours the ledger overruled, whose cache entries go.
    let mut looked: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    let mut overruled: Vec<i64> = Vec::new();
    let mut ledger_rounds = 0u32;
    loop {
        let now = clock.now_ms();
        let epoch = now / cfg.dedup_window_ms.max(1);
        let (mode, base, block) = refill.map_or((0, 0, 0), |r| (r.mode, r.base, r.block));
        let json_bytes: usize = items
            .iter()
            .map(|it| it.json.len() + it.client_msg_id.len() + 32)
            .sum();
        let looked_bytes: usize = looked.keys().map(|k| k.len() + 20).sum();
        let mut cmd = redis::Cmd::with_capacity(
            20 + 2 * looked.len() + 3 * items.len() + senders.len(),
            json_bytes + looked_bytes + predictions.len() + 256 + 3 * conversation_id.len(),
        );
        cmd.arg("EVALSHA")
            .arg(ASSIGN_SHA.as_str())
            .arg(3)
            .arg(malloc_key(conversation_id))
            .arg(dedup_key(conversation_id, epoch))
            .arg(dedup_key(conversation_id, epoch - 1))
            .arg(conversation_id)
            .arg(now)
            .arg(&token)
            .arg(mode)
            .arg(base)
            .arg(block)
            .arg(cfg.dedup_window_ms * 2)
            .arg(cfg.malloc_ttl_s)
            .arg(cfg.lock_ttl_ms)
            .arg(cfg.msg_cache_ttl_s)
            .arg(cfg.read_seq_ttl_s)
            .arg(items.len())
            .arg(u8::from(cfg.cache_in_script))
            .arg(first_predicted)
            .arg(&predictions);
        if cfg.ledger {
            cmd.arg(looked.len());
            for (id, seq) in &looked {
                cmd.arg(id).arg(*seq);
            }
        } else {
            cmd.arg(-1);
        }
        for (it, who) in items.iter().zip(&sender_index) {
            if cfg.cache_in_script {
                cmd.arg(it.client_msg_id).arg(*who).arg(it.json);
            } else {
                cmd.arg(it.client_msg_id).arg(0).arg("");
            }
        }
        if cfg.cache_in_script {
            for s in &senders {
                cmd.arg(*s);
            }
        }
        // With a fence, WAIT goes in one pipeline with the script: both on
        // one connection, back to back. WAIT only covers the writes of its
        // own connection, so a WAIT sent after a reconnect (to a promoted
        // replica that never saw the script's writes) would confirm nothing
        // and still answer "replicated" — the simulator found exactly that.
        let fenced = cfg.wait_replicas > 0;
        let sent = if fenced {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd)
                .cmd("WAIT")
                .arg(cfg.wait_replicas)
                .arg(cfg.wait_timeout_ms);
            pipe.query_async::<(Vec<i64>, i64)>(conn).await
        } else {
            cmd.query_async::<Vec<i64>>(conn).await.map(|r| (r, 0))
        };
        let (reply, acked) = match sent {
            Ok(r) => r,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // First use on this server (or after SCRIPT FLUSH): load it
                // and go round again.
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(ASSIGN_SOURCE)
                    .query_async::<()>(conn)
                    .await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match reply.first().copied() {
            Some(0) if reply.len() >= 2 && reply.len() % 2 == 0 => {
                if fenced && acked < i64::from(cfg.wait_replicas) {
                    return Err(CacheError::NotReplicated {
                        acked,
                        wanted: cfg.wait_replicas,
                    });
                }
                let (seqs, hits) = read_done(&reply, items.len())
                    .ok_or_else(|| CacheError::Protocol(reply.clone()))?;
                if !cfg.cache_in_script {
                    put_each(conn, cfg, conversation_id, items, &seqs).await?;
                }
                if cfg.ledger {
                    let mut entries: Vec<(String, i64)> = items
                        .iter()
                        .zip(&seqs)
                        .filter(|(it, _)| !it.client_msg_id.is_empty())
                        .map(|(it, seq)| (it.client_msg_id.to_string(), *seq))
                        .collect();
                    entries.sort();
                    entries.dedup();
                    let conflicts = store.record_seqs(conversation_id, entries, now).await?;
                    if !conflicts.is_empty() {
                        // Another instance used these messages' seqs before
                        // Redis lost them: theirs stand, ours are dropped.
                        ledger_rounds += 1;
                        if ledger_rounds > 3 {
                            return Err(CacheError::LedgerConflict(conversation_id.to_string()));
                        }
                        for (id, theirs) in conflicts {
                            if let Some(i) = items.iter().position(|it| it.client_msg_id == id) {
                                overruled.push(seqs[i]);
                            }
                            looked.insert(id, theirs);
                        }
                        refill = None;
                        continue;
                    }
                }
                overruled.retain(|s| !seqs.contains(s));
                for seq in overruled.drain(..) {
                    redis::cmd("DEL")
                        .arg(msg_cache_key(conversation_id, seq))
                        .query_async::<()>(conn)
                        .await?;
                }
                return Ok(Assignment {
                    prev: reply[1],
                    seqs,
                    hits,
                });
            }
            Some(mode @ (1 | 3)) if reply.len() == 2 => {
                let need = reply[1];
                let block = block_size(conversation_id, need);
                let base = store.reserve_seqs(conversation_id, block).await?;
                refill = Some(Refill { mode, base, block });
            }
            Some(2) => {
                lock_waits += 1;
                if lock_waits > cfg.lock_wait_attempts {
                    return Err(CacheError::LockTimeout(conversation_id.to_string()));
                }
                clock.sleep(wait).await;
                wait = (wait * 2).min(cfg.lock_wait_max);
                refill = None;
            }
            Some(5) => {
                // Redis lost this conversation's history: look the new
                // messages up in the ledger, then ask again.
                ledger_rounds += 1;
                if ledger_rounds > 3 + items.len() as u32 {
                    return Err(CacheError::LedgerConflict(conversation_id.to_string()));
                }
                let mut ids = Vec::with_capacity(reply.len() - 1);
                for i in &reply[1..] {
                    let it = usize::try_from(*i - 1)
                        .ok()
                        .and_then(|i| items.get(i))
                        .ok_or_else(|| CacheError::Protocol(reply.clone()))?;
                    ids.push(it.client_msg_id.to_string());
                }
                let found = store.recorded_seqs(conversation_id, ids.clone()).await?;
                for id in ids {
                    looked.entry(id).or_insert(0);
                }
                for (id, seq) in found {
                    looked.insert(id, seq);
                }
                refill = None;
            }
            Some(4) => {
                // Our lock expired and someone else refilled: the block we
                // reserved is abandoned (a gap) and we start over.
                lock_waits += 1;
                if lock_waits > cfg.lock_wait_attempts {
                    return Err(CacheError::LockTimeout(conversation_id.to_string()));
                }
                refill = None;
            }
            _ => return Err(CacheError::Protocol(reply)),
        }
    }
}

/// What the script needs to check the caller's seq predictions: the seq
/// the first message's JSON was written with when every next message's
/// predicts one more (-1 when not), and the list of each message's
/// `predicted:offset`, which the script reads only when a prediction
/// missed. Both are empty-handed when the script writes no cache.
fn predictions(items: &[AssignItem<'_>], cache_in_script: bool) -> (i64, String) {
    use std::fmt::Write as _;
    if !cache_in_script {
        return (0, String::new());
    }
    let first = items.first().map_or(0, |it| it.predicted);
    let consecutive = first >= 0
        && items
            .iter()
            .zip(first..)
            .all(|(it, want)| it.predicted == want);
    let mut list = String::with_capacity(items.len() * 12);
    for it in items {
        if !list.is_empty() {
            list.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = write!(list, "{}:{}", it.predicted, it.seq_at);
    }
    (if consecutive { first } else { -1 }, list)
}

/// The seqs and hit flags of `n` messages from the script's "done" reply
/// `{0, prev, i_1, seq_1, ...}`, which lists the messages whose seq was
/// already known (by 1-based index, ascending); the others got `prev + 1`,
/// `prev + 2`, ... in order. `None` if the reply does not fit `n`.
fn read_done(reply: &[i64], n: usize) -> Option<(Vec<i64>, Vec<bool>)> {
    let prev = *reply.get(1)?;
    let mut seqs = vec![0; n];
    let mut hits = vec![false; n];
    let mut last = 0usize;
    for pair in reply.get(2..)?.chunks_exact(2) {
        let i = usize::try_from(pair[0]).ok()?;
        if i <= last || i > n {
            return None;
        }
        last = i;
        seqs[i - 1] = pair[1];
        hits[i - 1] = true;
    }
    let mut next = prev;
    for (seq, hit) in seqs.iter_mut().zip(&hits) {
        if !hit {
            next += 1;
            *seq = next;
        }
    }
    Some((seqs, hits))
}

/// Writes the cache entries and raises the senders' read seqs of an
/// assignment, one command per key so that each goes to the node holding
/// its slot (Redis Cluster); all at once. Like the script, it is
/// idempotent: a retry writes the same values.
async fn put_each<C: ConnectionLike + Clone + Send + Sync>(
    conn: &C,
    cfg: &CacheConfig,
    conversation_id: &str,
    items: &[AssignItem<'_>],
    seqs: &[i64],
) -> Result<(), CacheError> {
    let mut top: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    let mut writes = Vec::with_capacity(items.len());
    for (it, seq) in items.iter().zip(seqs) {
        if let Some(who) = it.sender {
            let t = top.entry(who).or_insert(*seq);
            *t = (*t).max(*seq);
        }
        let mut inv = PUT.prepare_invoke();
        inv.key(msg_cache_key(conversation_id, *seq))
            .arg("cache")
            .arg(it.cache_json(*seq).as_ref())
            .arg(cfg.msg_cache_ttl_s);
        writes.push(inv);
    }
    for (who, seq) in top {
        let mut inv = PUT.prepare_invoke();
        inv.key(read_seq_key(conversation_id, who))
            .arg("read")
            .arg(seq)
            .arg(cfg.read_seq_ttl_s);
        writes.push(inv);
    }
    futures::future::try_join_all(writes.iter().map(|inv| {
        let mut c = conn.clone();
        async move { inv.invoke_async::<i64>(&mut c).await }
    }))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
