//! The Redis side of the service (`cache::assign` and its Lua script) on a
//! real Redis server, compared with the embedded Redis model.
//!
//! Needs `REDIS_URL` (see `tests/support`). Every test works in its own
//! key namespace, so the suite can share a server with anything else.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use msgtransfer::cache::{
    self, AssignItem, Assignment, CacheConfig, TokenSource, dedup_key, malloc_key, msg_cache_key,
    read_seq_key,
};
use msgtransfer::embedded::redis::{EmbeddedRedis, shared_engine};
use msgtransfer::embedded::store::EmbeddedStore;
use msgtransfer::ports::clock::ManualClock;
use msgtransfer::ports::{Clock, SeededRng};
use rand::{Rng as _, SeedableRng};
use redis::aio::ConnectionLike;

const NOW_MS: i64 = 1_764_000_000_000;

/// One side of the comparison: a connection, its own Mongo stand-in and
/// the shared clock and settings.
struct Side<C> {
    conn: C,
    store: EmbeddedStore,
    tokens: TokenSource,
}

impl<C: ConnectionLike + Clone + Send + Sync> Side<C> {
    fn new(conn: C) -> Self {
        Side {
            conn,
            store: EmbeddedStore::new(),
            tokens: TokenSource::new(&SeededRng::new(5)),
        }
    }

    async fn assign(
        &mut self,
        clock: &dyn Clock,
        conv: &str,
        items: &[AssignItem<'_>],
    ) -> Assignment {
        cache::assign(
            &mut self.conn,
            &self.store,
            clock,
            &self.tokens,
            &CacheConfig::default(),
            conv,
            items,
        )
        .await
        .unwrap_or_else(|e| panic!("assign on {conv}: {e}"))
    }

    async fn hgetall(&mut self, key: &str) -> BTreeMap<String, String> {
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }

    async fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .unwrap()
    }
}

/// What follows the seq in the tests' cache JSON.
const SUFFIX: &str = ",\"content\":\"h\\u003ci\"}";

/// A cache JSON: `prefix`, the seq the caller predicts, then [`SUFFIX`].
fn json(prefix: &str, predicted: i64) -> String {
    format!("{prefix}{predicted}{SUFFIX}")
}

/// A message whose cache JSON (from [`json`]) predicts seq `predicted`.
fn item<'a>(id: &'a str, sender: Option<&'a str>, json: &'a str, predicted: i64) -> AssignItem<'a> {
    AssignItem {
        client_msg_id: id,
        sender,
        json,
        predicted,
        seq_at: json.len() - SUFFIX.len() - predicted.to_string().len(),
    }
}

#[tokio::test]
async fn first_batch_leaves_openim_layout_in_real_redis() {
    let clock = ManualClock::new(NOW_MS);
    let mut real = Side::new(support::redis_conn().await);
    let conv = format!("si_{}_alice", support::unique("bob"));
    // Predicted right (1, 2): the script stores the JSON as it came.
    let (j1, j2) = (json("{\"seq\":", 1), json("{\"seq\":", 2));
    let a = real
        .assign(
            &clock,
            &conv,
            &[
                item("m1", Some("alice"), &j1, 1),
                item("m2", Some("alice"), &j2, 2),
            ],
        )
        .await;
    assert_eq!(a.seqs, vec![1, 2]);
    assert_eq!(a.hits, vec![false, false]);
    assert_eq!(a.prev, 0);

    // MALLOC_SEQ: CURR/LAST/TIME as OpenIM keeps them, a 50-seq block
    // reserved beyond the batch for a single chat, no LOCK left behind,
    // and the 365-day TTL.
    let malloc = real.hgetall(&malloc_key(&conv)).await;
    assert_eq!(malloc.get("CURR").map(String::as_str), Some("2"));
    assert_eq!(malloc.get("LAST").map(String::as_str), Some("52"));
    assert_eq!(malloc.get("TIME"), Some(&NOW_MS.to_string()));
    assert!(!malloc.contains_key("LOCK"), "{malloc:?}");
    assert_eq!(real.store.seq_doc(&conv).unwrap().max_seq, 52);
    let ttl = real.pttl(&malloc_key(&conv)).await;
    assert!(ttl > 364 * 86_400_000 && ttl <= 365 * 86_400_000, "{ttl}");

    // MSG_CACHE: the JSON with the seq spliced in, 24 h.
    for seq in [1, 2] {
        let key = msg_cache_key(&conv, seq);
        let cached = real.hgetall(&key).await;
        assert_eq!(
            cached.get("value").map(String::as_str),
            Some(format!("{{\"seq\":{seq},\"content\":\"h\\u003ci\"}}").as_str())
        );
        let ttl = real.pttl(&key).await;
        assert!(ttl > 86_000_000 && ttl <= 86_400_000, "{ttl}");
    }

    // SEQ_USER_READ: the sender has read their own messages, 30 days.
    let read = real.hgetall(&read_seq_key(&conv, "alice")).await;
    assert_eq!(read.get("value").map(String::as_str), Some("2"));

    // The dedup table remembers both clientMsgIDs in this epoch.
    let epoch = NOW_MS / CacheConfig::default().dedup_window_ms;
    let dedup = real.hgetall(&dedup_key(&conv, epoch)).await;
    assert_eq!(dedup.get("m1").map(String::as_str), Some("1"));
    assert_eq!(dedup.get("m2").map(String::as_str), Some("2"));
}

#[tokio::test]
async fn redelivery_gets_its_first_seq_back_from_real_redis() {
    let clock = ManualClock::new(NOW_MS);
    let mut real = Side::new(support::redis_conn().await);
    let conv = format!("sg_{}", support::unique("grp"));
    // Predicted wrong (0): the script splices in the seqs.
    let j = json("{\"seq\":", 0);
    let p = j.as_str();
    let first = real
        .assign(
            &clock,
            &conv,
            &[item("a", None, p, 0), item("b", None, p, 0)],
        )
        .await;
    assert_eq!(first.seqs, vec![1, 2]);
    // The same two again, with a new one in between and a copy of it.
    let again = real
        .assign(
            &clock,
            &conv,
            &[
                item("b", None, p, 0),
                item("c", None, p, 0),
                item("a", None, p, 0),
                item("c", None, p, 0),
            ],
        )
        .await;
    assert_eq!(again.seqs, vec![2, 3, 1, 3]);
    assert_eq!(again.hits, vec![true, false, true, true]);
    let malloc = real.hgetall(&malloc_key(&conv)).await;
    assert_eq!(malloc.get("CURR").map(String::as_str), Some("3"));
    // A group reserves 100 beyond the batch.
    assert_eq!(malloc.get("LAST").map(String::as_str), Some("102"));
}

/// A seeded random sequence of batches (duplicates, several senders,
/// refills across block boundaries, batches above 100 messages) runs on
/// the embedded model and on real Redis; every reply and every key the
/// script wrote must be the same on both.
#[tokio::test]
async fn embedded_redis_agrees_with_real_redis_on_random_batches() {
    let clock = ManualClock::new(NOW_MS);
    let engine = shared_engine(3);
    let mut model = Side::new(EmbeddedRedis::new(
        engine,
        Arc::new(ManualClock::new(NOW_MS)),
    ));
    let mut real = Side::new(support::redis_conn().await);
    let run = support::unique("d");
    let convs = [
        format!("si_{run}_u1"),
        format!("sg_{run}"),
        format!("sn_{run}_u2"),
    ];
    let senders = ["u1", "u2", "u3"];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let mut written: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut readers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ids: Vec<String> = Vec::new();
    for step in 0..60 {
        let conv = &convs[rng.random_range(0..convs.len())];
        let n = if step % 17 == 16 {
            rng.random_range(101..160) // above a bucket and above a block
        } else {
            rng.random_range(1..12)
        };
        let mut batch_ids = Vec::with_capacity(n);
        for _ in 0..n {
            // About one in five is a clientMsgID seen before (redelivery).
            if !ids.is_empty() && rng.random_bool(0.2) {
                batch_ids.push(ids[rng.random_range(0..ids.len())].clone());
            } else {
                let id = format!("m{}", ids.len());
                ids.push(id.clone());
                batch_ids.push(id);
            }
        }
        // Each message predicts a random seq near the next one, so that
        // both the stored-as-is and the spliced paths are compared.
        let prefix = format!("{{\"step\":{step},\"seq\":");
        let guesses: Vec<(String, i64)> = (0..batch_ids.len())
            .map(|_| {
                let guess = rng.random_range(0..40i64);
                (json(&prefix, guess), guess)
            })
            .collect();
        let items: Vec<AssignItem<'_>> = batch_ids
            .iter()
            .zip(&guesses)
            .map(|(id, (j, guess))| {
                let sender = conv
                    .starts_with("si_")
                    .then(|| senders[rng.random_range(0..senders.len())]);
                item(id, sender, j, *guess)
            })
            .collect();
        let want = model.assign(&clock, conv, &items).await;
        let got = real.assign(&clock, conv, &items).await;
        assert_eq!(got, want, "step {step}, {conv}, {n} messages");
        written
            .entry(conv.clone())
            .or_default()
            .extend(got.seqs.iter().copied());
        for it in &items {
            if let Some(s) = it.sender {
                readers.entry(conv.clone()).or_default().push(s.to_string());
            }
        }
    }

    let epoch = NOW_MS / CacheConfig::default().dedup_window_ms;
    let mut compared = 0;
    for conv in &convs {
        let mut keys = vec![malloc_key(conv), dedup_key(conv, epoch)];
        let mut seqs = written.get(conv).cloned().unwrap_or_default();
        seqs.sort_unstable();
        seqs.dedup();
        keys.extend(seqs.iter().map(|s| msg_cache_key(conv, *s)));
        for user in readers.get(conv).into_iter().flatten() {
            keys.push(read_seq_key(conv, user));
        }
        keys.sort();
        keys.dedup();
        for key in &keys {
            let want = model.hgetall(key).await;
            let got = real.hgetall(key).await;
            assert!(!want.is_empty(), "{key} missing in the model");
            assert_eq!(got, want, "{key}");
            // Same expiry policy on both (the model's clock stands still;
            // the real one moves on a little while the test runs).
            let (m, r) = (model.pttl(key).await, real.pttl(key).await);
            assert!(
                m > 0 && r > 0 && (m - r).abs() < 60_000,
                "{key}: {m} vs {r}"
            );
            compared += 1;
        }
        assert_eq!(
            model.store.seq_doc(conv).map(|d| d.max_seq),
            real.store.seq_doc(conv).map(|d| d.max_seq),
            "{conv}: Mongo reservations"
        );
    }
    assert!(compared > 100, "only {compared} keys compared");
}

/// Several connections assigning into one conversation at once, on a
/// multi-threaded runtime: refills race for OpenIM's LOCK, and still no
/// two messages share a seq and every seq lies inside a Mongo reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_share_a_seq_on_real_redis() {
    let conv = format!("sg_{}", support::unique("race"));
    let store = Arc::new(EmbeddedStore::new());
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut conn = support::redis_conn().await;
        let (conv, store, clock) = (conv.clone(), store.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let tokens = TokenSource::new(&SeededRng::new(w));
            let mut seqs = Vec::new();
            for b in 0..40 {
                let ids: Vec<String> = (0..7).map(|i| format!("w{w}b{b}i{i}")).collect();
                let j = json("{\"seq\":", 0);
                let items: Vec<AssignItem<'_>> =
                    ids.iter().map(|id| item(id, None, &j, 0)).collect();
                let a = cache::assign(
                    &mut conn,
                    store.as_ref(),
                    clock.as_ref(),
                    &tokens,
                    &CacheConfig::default(),
                    &conv,
                    &items,
                )
                .await
                .unwrap();
                seqs.extend(a.seqs);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "two messages got the same seq");
    let reserved = store.seq_doc(&conv).unwrap().max_seq;
    assert!(*all.first().unwrap() >= 1);
    assert!(
        *all.last().unwrap() <= reserved,
        "seq beyond the reservation"
    );
}

/// The whole service with real Redis in place of the embedded model (the
/// log and the store stay embedded): seeded OpenIM traffic with producer
/// duplicates goes through, and the checker, reading the real server back,
/// finds every message cached, persisted and pushed once, at one seq.
///
/// The workload's conversation IDs are fixed by its seed, so this test has
/// Redis database 5 to itself and empties it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_real_redis_passes_the_checker() {
    use msgtransfer::cache::RedisDump;
    use msgtransfer::check;
    use msgtransfer::demo::workload::{WorkloadSpec, generate};
    use msgtransfer::embedded::history;
    use msgtransfer::embedded::hook::EmbeddedHook;
    use msgtransfer::embedded::log::EmbeddedLog;
    use msgtransfer::metrics::Metrics;
    use msgtransfer::ports::LogConsumer;
    use msgtransfer::ports::clock::SystemClock;
    use msgtransfer::service::{self, ServiceConfig, Wiring};
    use std::time::Duration;

    let mut conn = support::redis_db_flushed(5).await;

    let clock: Arc<SystemClock> = Arc::new(SystemClock::new());
    let cfg = ServiceConfig::default();
    let topics = cfg.transfer.topics.clone();
    let log = EmbeddedLog::new(4, 1_000_000, clock.clone());
    let store = EmbeddedStore::new();
    let work = generate(&WorkloadSpec {
        messages: 4000,
        conversations: 60,
        seed: 17,
        duplicate_rate: 0.05,
        topic: topics.to_redis.clone(),
        start_ms: clock.now_ms(),
    });
    assert!(work.duplicates > 0);
    for rec in work.records {
        log.append(rec).unwrap();
    }
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let wiring = Wiring {
        redis: conn.clone(),
        store: Arc::new(store.clone()),
        producer: Arc::new(log.producer()),
        hook: Arc::new(EmbeddedHook::default()),
        clock: clock.clone(),
        rng: Arc::new(SeededRng::new(9)),
        metrics: metrics.clone(),
    };
    let transfer: Vec<Box<dyn LogConsumer>> = vec![
        Box::new(log.consumer(&cfg.groups.to_redis, &topics.to_redis)),
        Box::new(log.consumer(&cfg.groups.to_redis, &topics.to_redis)),
    ];
    let persist = Box::new(log.consumer(&cfg.groups.to_mongo, &topics.to_mongo));
    let svc_cfg = cfg.clone();
    let svc =
        tokio::spawn(async move { service::run(wiring, transfer, persist, &svc_cfg, rx).await });
    let mut drained = false;
    for _ in 0..600 {
        clock.sleep(Duration::from_millis(50)).await;
        if log.lag(&cfg.groups.to_redis, &topics.to_redis) == 0
            && log.lag(&cfg.groups.to_mongo, &topics.to_mongo) == 0
        {
            drained = true;
            break;
        }
    }
    tx.send(true).unwrap();
    svc.await.unwrap().unwrap();
    assert!(drained, "the service did not drain within 30 s");

    let dump = RedisDump::read(&mut conn).await.unwrap();
    let (h, misplaced) = history::collect(&log, &topics, &store, &dump);
    let r = check::check(&h);
    assert_eq!((r.anomalies(), misplaced), (0, 0), "{:?}", r.examples);
    assert_eq!(r.messages, 4000);
    assert_eq!(r.pushed, 4000);
    assert_eq!(r.persisted, r.stored);
    assert_eq!(r.cached, r.stored);
    assert!(
        Metrics::get(&metrics.dedup_hits) > 0,
        "no producer duplicate was caught"
    );
}

/// The failover fence: with a replica required and none there to confirm,
/// `assign` refuses to hand out the seqs; the batch is retried later and
/// gets the same seqs back from the dedup table.
#[tokio::test]
async fn the_failover_fence_refuses_seqs_no_replica_confirmed() {
    let clock = ManualClock::new(NOW_MS);
    let mut side = Side::new(support::redis_conn().await);
    let conv = format!("sg_{}", support::unique("fence"));
    let j = json("{\"seq\":", 0);
    let items = [item("m1", Some("u1"), &j, 0)];
    let fenced = CacheConfig {
        wait_replicas: 1,
        wait_timeout_ms: 50,
        ..CacheConfig::default()
    };
    let refused = cache::assign(
        &mut side.conn,
        &side.store,
        &clock,
        &side.tokens,
        &fenced,
        &conv,
        &items,
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(cache::CacheError::NotReplicated {
                acked: 0,
                wanted: 1
            })
        ),
        "{refused:?}"
    );
    // Without the fence (or once a replica confirms) the same message gets
    // the seq the refused attempt allocated: no seq is skipped or reused.
    let done = side.assign(&clock, &conv, &items).await;
    assert_eq!(done.seqs, vec![1]);
    assert_eq!(done.hits, vec![true]);
}

/// Redis Cluster mode writes the cache entries and read seqs one command
/// per key instead of inside the script: the keys, values and TTLs come
/// out the same.
#[tokio::test]
async fn per_key_cache_writes_leave_what_the_script_leaves() {
    let clock = ManualClock::new(NOW_MS);
    let mut side = Side::new(support::redis_conn().await);
    let run = support::unique("perkey");
    let (in_script, per_key) = (format!("sg_{run}a"), format!("sg_{run}b"));
    // Predictions right (1, 3) and wrong (5; 4 for the copy of m1).
    let guesses = [1, 5, 3, 4].map(|g| (json("{\"seq\":", g), g));
    let items = [
        item("m1", Some("u1"), &guesses[0].0, guesses[0].1),
        item("m2", Some("u2"), &guesses[1].0, guesses[1].1),
        item("m3", Some("u1"), &guesses[2].0, guesses[2].1),
        item("m1", Some("u1"), &guesses[3].0, guesses[3].1),
    ];
    let a = side.assign(&clock, &in_script, &items).await;
    let cluster_cfg = CacheConfig {
        cache_in_script: false,
        ..CacheConfig::default()
    };
    let b = cache::assign(
        &mut side.conn,
        &side.store,
        &clock,
        &side.tokens,
        &cluster_cfg,
        &per_key,
        &items,
    )
    .await
    .unwrap();
    assert_eq!(a.seqs, b.seqs);
    assert_eq!(a.hits, b.hits);
    for seq in &a.seqs {
        let (ka, kb) = (
            msg_cache_key(&in_script, *seq),
            msg_cache_key(&per_key, *seq),
        );
        assert_eq!(side.hgetall(&ka).await, side.hgetall(&kb).await);
        assert!(side.pttl(&kb).await > 0);
    }
    for user in ["u1", "u2"] {
        let (ka, kb) = (read_seq_key(&in_script, user), read_seq_key(&per_key, user));
        let got = side.hgetall(&kb).await;
        assert_eq!(side.hgetall(&ka).await, got);
        assert!(!got.is_empty());
        assert!(side.pttl(&kb).await > 0);
    }
}
