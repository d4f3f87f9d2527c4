//! The assign script and its protocol, against the embedded Redis model.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::embedded::redis::{EmbeddedRedis, shared_engine};
use crate::embedded::store::EmbeddedStore;
use crate::ports::clock::ManualClock;
use crate::ports::{Clock, SeededRng};

struct Fixture {
    redis: EmbeddedRedis,
    store: EmbeddedStore,
    clock: Arc<ManualClock>,
    tokens: TokenSource,
    cfg: CacheConfig,
}

fn fixture() -> Fixture {
    let clock = Arc::new(ManualClock::new(1_764_000_000_000));
    Fixture {
        redis: EmbeddedRedis::new(shared_engine(1), clock.clone()),
        store: EmbeddedStore::new(),
        clock,
        tokens: TokenSource::new(&SeededRng::new(1)),
        cfg: CacheConfig::default(),
    }
}

fn items<'a>(ids: &'a [&'a str], sender: Option<&'a str>) -> Vec<AssignItem<'a>> {
    ids.iter()
        .map(|id| AssignItem {
            client_msg_id: id,
            sender,
            // Predicts seq 0, which no message gets: every entry is
            // spliced (the tests below check both ways).
            json: "{\"Seq\":0}",
            predicted: 0,
            seq_at: 7,
        })
        .collect()
}

impl Fixture {
    async fn assign(&mut self, conv: &str, ids: &[&str], sender: Option<&str>) -> Assignment {
        self.try_assign(conv, &items(ids, sender)).await.unwrap()
    }

    async fn try_assign(
        &mut self,
        conv: &str,
        items: &[AssignItem<'_>],
    ) -> Result<Assignment, CacheError> {
        assign(
            &mut self.redis,
            &self.store,
            self.clock.as_ref(),
            &self.tokens,
            &self.cfg,
            conv,
            items,
        )
        .await
    }

    /// Asserts each `(seq, json)` is cached under `conv` with that JSON.
    async fn assert_cached(&mut self, conv: &str, want: &[(i64, &str)]) {
        for (seq, json) in want {
            let key = format!("MSG_CACHE:{conv}:{seq}");
            assert_eq!(
                self.hget(&key, "value").await.as_deref(),
                Some(*json),
                "{key}"
            );
        }
    }

    async fn hget(&mut self, key: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut self.redis)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn first_allocation_reserves_a_block_in_mongo_like_openim() {
    let mut f = fixture();
    let a = f.assign("si_a_b", &["m1", "m2"], Some("a")).await;
    assert_eq!(a.seqs, vec![1, 2]);
    assert_eq!(a.prev, 0);
    assert_eq!(a.hits, vec![false, false]);
    // Block of size + 50 for a single chat; CURR/LAST/TIME as OpenIM keeps them.
    assert_eq!(f.store.seq_doc("si_a_b").unwrap().max_seq, 52);
    assert_eq!(
        f.hget("MALLOC_SEQ:si_a_b", "CURR").await.as_deref(),
        Some("2")
    );
    assert_eq!(
        f.hget("MALLOC_SEQ:si_a_b", "LAST").await.as_deref(),
        Some("52")
    );
    assert_eq!(
        f.hget("MALLOC_SEQ:si_a_b", "TIME").await,
        Some(f.clock.now_ms().to_string())
    );
    assert_eq!(f.hget("MALLOC_SEQ:si_a_b", "LOCK").await, None);
    // Group conversations reserve size + 100.
    f.assign("sg_g1", &["x"], None).await;
    assert_eq!(f.store.seq_doc("sg_g1").unwrap().max_seq, 101);
}

#[tokio::test(flavor = "current_thread")]
async fn allocations_continue_the_block_then_refill_contiguously() {
    let mut f = fixture();
    f.assign("si_a_b", &["m1"], None).await; // block 1..=51
    let ids: Vec<String> = (2..=60).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let a = f.assign("si_a_b", &refs, None).await;
    assert_eq!(a.prev, 1);
    assert_eq!(
        a.seqs,
        (2..=60).collect::<Vec<i64>>(),
        "no gap across the refill"
    );
    assert_eq!(f.store.seq_doc("si_a_b").unwrap().max_seq, 51 + 59 + 50);
}

#[tokio::test(flavor = "current_thread")]
async fn the_cache_json_keeps_a_right_prediction_and_splices_a_wrong_one() {
    let mut f = fixture();
    // Three messages predicting 1, 2 and 3; "b" is a redelivery of "a"
    // inside the batch, so it gets 1, not its prediction, and "c" then
    // gets 2, not 3. Predictions with fewer and with more digits than the
    // seq are spliced too.
    let jsons = [
        ("a", "{\"Seq\":1,\"x\":\"a\"}", 1, 7),
        ("a", "{\"Seq\":2,\"x\":\"b\"}", 2, 7),
        ("c", "{\"Seq\":3,\"x\":\"c\"}", 3, 7),
        ("d", "{\"Seq\":40,\"x\":\"d\"}", 40, 7),
        ("e", "{\"Seq\":", 0, 7),
    ];
    let items: Vec<AssignItem<'_>> = jsons
        .iter()
        .map(|(id, json, predicted, seq_at)| AssignItem {
            client_msg_id: id,
            sender: None,
            json,
            predicted: *predicted,
            seq_at: *seq_at,
        })
        .collect();
    let a = f.try_assign("sg_g", &items).await.unwrap();
    assert_eq!(a.seqs, vec![1, 1, 2, 3, 4]);
    // Seq 1 was written twice, last by the copy, from its own JSON; seq 4
    // from a JSON that ends where the (missing) digits would be.
    let want = [
        (1, "{\"Seq\":1,\"x\":\"b\"}"),
        (2, "{\"Seq\":2,\"x\":\"c\"}"),
        (3, "{\"Seq\":3,\"x\":\"d\"}"),
        (4, "{\"Seq\":4"),
    ];
    f.assert_cached("sg_g", &want).await;
    // The same rule on the Rust side (Redis Cluster writes the cache there).
    assert_eq!(items[0].cache_json(1), "{\"Seq\":1,\"x\":\"a\"}");
    assert_eq!(items[3].cache_json(3), "{\"Seq\":3,\"x\":\"d\"}");
    assert_eq!(items[2].cache_json(123), "{\"Seq\":123,\"x\":\"c\"}");
    assert_eq!(items[4].cache_json(4), "{\"Seq\":4");
}

#[tokio::test(flavor = "current_thread")]
async fn consecutive_predictions_that_miss_are_spliced_from_the_offset_list() {
    // The pipeline predicts consecutive seqs, which the script checks by
    // arithmetic and reads the `predicted:offset` list only on a miss.
    let mut f = fixture();
    let ids: Vec<String> = (1..=8).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    f.assign("sg_g", &refs, None).await; // seqs 1..=8
    // Predicted 9, 10, 11; m3 is a redelivery (seq 3), so x gets 9 and y
    // 10: one digit fewer than predicted for m3 and x, the same for y.
    let jsons = [
        ("m3", "{\"Seq\":9,\"x\":\"m3\"}", 9),
        ("x", "{\"Seq\":10,\"x\":\"x\"}", 10),
        ("y", "{\"Seq\":11,\"x\":\"y\"}", 11),
    ];
    let items: Vec<AssignItem<'_>> = jsons
        .iter()
        .map(|(id, json, predicted)| AssignItem {
            client_msg_id: id,
            sender: None,
            json,
            predicted: *predicted,
            seq_at: 7,
        })
        .collect();
    assert_eq!(predictions(&items, true).0, 9, "sent as consecutive");
    let a = f.try_assign("sg_g", &items).await.unwrap();
    assert_eq!(a.seqs, vec![3, 9, 10]);
    assert_eq!(a.hits, vec![true, false, false]);
    assert_eq!(a.prev, 8);
    let want = [
        (3, "{\"Seq\":3,\"x\":\"m3\"}"),
        (9, "{\"Seq\":9,\"x\":\"x\"}"),
        (10, "{\"Seq\":10,\"x\":\"y\"}"),
    ];
    f.assert_cached("sg_g", &want).await;
}

#[test]
fn predictions_are_sent_as_a_first_seq_only_when_consecutive() {
    let item = |predicted, seq_at| AssignItem {
        client_msg_id: "m",
        sender: None,
        json: "",
        predicted,
        seq_at,
    };
    let run = [item(7, 3), item(8, 4), item(9, 5)];
    assert_eq!(predictions(&run, true), (7, "7:3 8:4 9:5".to_string()));
    let gap = [item(7, 3), item(9, 4)];
    assert_eq!(predictions(&gap, true), (-1, "7:3 9:4".to_string()));
    let repeated = [item(0, 7), item(0, 7)];
    assert_eq!(predictions(&repeated, true).0, -1);
    // Without cache writes in the script there is nothing to predict.
    assert_eq!(predictions(&run, false), (0, String::new()));
}

#[test]
fn the_done_reply_lists_known_seqs_and_counts_the_rest_from_prev() {
    // Five messages; the 2nd and 4th were known (seqs 3 and 40), the
    // others follow CURR = 10.
    let (seqs, hits) = read_done(&[0, 10, 2, 3, 4, 40], 5).unwrap();
    assert_eq!(seqs, vec![11, 3, 12, 40, 13]);
    assert_eq!(hits, vec![false, true, false, true, false]);
    // Nothing known: all fresh.
    assert_eq!(read_done(&[0, 0], 2).unwrap().0, vec![1, 2]);
    // Indices out of range, repeated or descending are refused.
    for bad in [
        &[0, 10, 0, 3][..],
        &[0, 10, 3, 3],
        &[0, 10, 2, 3, 2, 4],
        &[0, 10, 1, 3, 1, 4],
        &[0],
    ] {
        assert!(read_done(bad, 2).is_none(), "{bad:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn messages_are_cached_and_sender_read_seq_only_rises() {
    let mut f = fixture();
    f.assign("si_a_b", &["m1", "m2", "m3"], Some("a")).await;
    assert_eq!(
        f.hget("MSG_CACHE:si_a_b:3", "value").await.as_deref(),
        Some("{\"Seq\":3}")
    );
    assert_eq!(
        f.hget("SEQ_USER_READ:si_a_b:a", "value").await.as_deref(),
        Some("3")
    );
    // A redelivery of m1 does not lower the read seq.
    f.assign("si_a_b", &["m1"], Some("a")).await;
    assert_eq!(
        f.hget("SEQ_USER_READ:si_a_b:a", "value").await.as_deref(),
        Some("3")
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("MSG_CACHE:si_a_b:1")
        .query_async(&mut f.redis)
        .await
        .unwrap();
    assert_eq!(ttl, 86400);
}

#[tokio::test(flavor = "current_thread")]
async fn redelivered_messages_get_their_first_seq_back() {
    let mut f = fixture();
    let first = f.assign("sg_g", &["a", "b", "c"], None).await;
    let again = f.assign("sg_g", &["b", "d", "b", "c"], None).await;
    assert_eq!(first.seqs, vec![1, 2, 3]);
    assert_eq!(again.seqs, vec![2, 4, 2, 3]);
    assert_eq!(again.hits, vec![true, false, true, true]);
    // Copies inside one batch share a seq too.
    let dup = f.assign("sg_g", &["e", "e"], None).await;
    assert_eq!(dup.seqs, vec![5, 5]);
    assert_eq!(dup.hits, vec![false, true]);
    // Empty IDs are never deduplicated.
    let anon = f.assign("sg_g", &["", ""], None).await;
    assert_eq!(anon.seqs, vec![6, 7]);
}

#[tokio::test(flavor = "current_thread")]
async fn dedup_holds_for_one_window_and_lapses_after_two() {
    let mut f = fixture();
    f.cfg.dedup_window_ms = 60_000;
    // The ledger keeps the same windows (the daemon sets both from one knob).
    f.store = EmbeddedStore::new().with_ledger_window(60_000);
    f.assign("si_a_b", &["m1"], None).await;
    f.clock.advance(Duration::from_millis(59_000));
    assert_eq!(f.assign("si_a_b", &["m1"], None).await.seqs, vec![1]);
    f.clock.advance(Duration::from_millis(121_000));
    let late = f.assign("si_a_b", &["m1"], None).await;
    assert_eq!(late.hits, vec![false], "forgotten after two windows");
}

#[tokio::test(flavor = "current_thread")]
async fn waits_for_a_foreign_lock_and_takes_over_when_it_expires() {
    let mut f = fixture();
    f.assign("si_a_b", &["m1"], None).await;
    // Another process (e.g. OpenIM's msg RPC) is refilling: LOCK set, 3 s TTL.
    let _: () = redis::cmd("HSET")
        .arg("MALLOC_SEQ:si_a_b")
        .arg("LOCK")
        .arg("someone-else")
        .query_async(&mut f.redis)
        .await
        .unwrap();
    let _: () = redis::cmd("PEXPIRE")
        .arg("MALLOC_SEQ:si_a_b")
        .arg(3000)
        .query_async(&mut f.redis)
        .await
        .unwrap();
    let before = f.clock.now_ms();
    let a = f.assign("si_a_b", &["m2"], None).await;
    assert!(
        f.clock.now_ms() - before >= 3000,
        "waited for the lock to lapse"
    );
    // The whole key expired with the lock, so the seq comes from a fresh
    // Mongo block: a gap, never a reuse.
    assert_eq!(a.seqs, vec![52]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_lock_that_never_lapses_times_out() {
    let mut f = fixture();
    f.cfg.lock_wait_attempts = 3;
    let _: () = redis::cmd("HSET")
        .arg("MALLOC_SEQ:c")
        .arg("LOCK")
        .arg("stuck")
        .query_async(&mut f.redis)
        .await
        .unwrap();
    let err = f.try_assign("c", &items(&["m"], None)).await.unwrap_err();
    assert!(matches!(err, CacheError::LockTimeout(_)), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn redis_data_loss_never_reuses_a_seq() {
    let mut f = fixture();
    f.assign("si_a_b", &["m1", "m2"], None).await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut f.redis)
        .await
        .unwrap();
    let a = f.assign("si_a_b", &["m3"], None).await;
    assert_eq!(
        a.seqs,
        vec![53],
        "the next block starts above Mongo's max_seq"
    );
}

async fn flushall(f: &mut Fixture) {
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut f.redis)
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn dedup_survives_a_redis_data_loss_through_the_ledger() {
    let mut f = fixture();
    let first = f.assign("si_a_b", &["m1", "m2"], Some("a")).await;
    assert_eq!(first.seqs, vec![1, 2]);
    flushall(&mut f).await;
    // m2 and m1 come again (a redelivery after the loss) with a new m3.
    let again = f.assign("si_a_b", &["m2", "m3", "m1"], Some("a")).await;
    assert_eq!(
        again.seqs,
        vec![2, 53, 1],
        "recorded seqs back, m3 above the old block"
    );
    assert_eq!(again.hits, vec![true, false, true]);
    assert!(
        f.hget("MALLOC_SEQ:si_a_b", "SUSPECT").await.is_some(),
        "the conversation is marked for ledger lookups"
    );
    // The dedup table learnt them back: the next time Redis answers alone.
    let epoch = f.clock.now_ms() / f.cfg.dedup_window_ms;
    assert_eq!(
        f.hget(&dedup_key("si_a_b", epoch), "m1").await.as_deref(),
        Some("1")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn without_the_ledger_a_redis_data_loss_forgets_dedup() {
    let mut f = fixture();
    f.cfg.ledger = false;
    f.assign("si_a_b", &["m1"], None).await;
    flushall(&mut f).await;
    let again = f.assign("si_a_b", &["m1"], None).await;
    assert_eq!(
        again.seqs,
        vec![52],
        "a second seq: what the ledger prevents"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_conversation_needs_no_ledger_lookup() {
    let mut f = fixture();
    f.assign("si_a_b", &["m1"], None).await;
    assert_eq!(f.hget("MALLOC_SEQ:si_a_b", "SUSPECT").await, None);
}

#[tokio::test(flavor = "current_thread")]
async fn the_ledger_overrules_a_seq_redis_handed_out_twice() {
    let mut f = fixture();
    f.assign("si_a_b", &["m0"], None).await;
    // Another instance gave m1 seq 2 and recorded it, then Redis lost that
    // before this instance, not yet suspecting anything, asks for m1.
    let conflicts = f
        .store
        .record_seqs("si_a_b", vec![("m1".into(), 2)], f.clock.now_ms())
        .await
        .unwrap();
    assert!(conflicts.is_empty());
    let _: () = redis::cmd("HSET")
        .arg("MALLOC_SEQ:si_a_b")
        .arg("CURR")
        .arg(2)
        .query_async(&mut f.redis)
        .await
        .unwrap();
    let a = f.assign("si_a_b", &["m1"], None).await;
    assert_eq!(a.seqs, vec![2], "the recorded seq stands");
    assert_eq!(
        f.hget("MSG_CACHE:si_a_b:3", "value").await,
        None,
        "the cache entry under the overruled seq is gone"
    );
    assert!(f.hget("MSG_CACHE:si_a_b:2", "value").await.is_some());
}

#[test]
fn key_names_are_openims_and_dedup_shares_the_allocator_slot() {
    assert_eq!(malloc_key("sg_1"), "MALLOC_SEQ:sg_1");
    assert_eq!(msg_cache_key("sg_1", 7), "MSG_CACHE:sg_1:7");
    assert_eq!(read_seq_key("si_a_b", "a"), "SEQ_USER_READ:si_a_b:a");
    // The hash tag of the dedup key is the allocator's whole key name.
    assert_eq!(dedup_key("sg_1", 3), "{MALLOC_SEQ:sg_1}:DEDUP:3");
}

#[test]
fn lock_tokens_never_repeat_and_differ_between_sources() {
    let a = TokenSource::new(&SeededRng::new(1));
    let b = TokenSource::new(&SeededRng::new(2));
    let (a1, a2, b1) = (a.token(), a.token(), b.token());
    assert_ne!(a1, a2);
    assert_ne!(a1, b1);
}

/// Records how commands reach the server (one entry per request: the names
/// of the commands in it) and plays a replica that confirms every `WAIT`.
#[derive(Clone)]
struct Recorder {
    inner: EmbeddedRedis,
    requests: Arc<parking_lot::Mutex<Vec<Vec<String>>>>,
}

fn command_name(cmd: &redis::Cmd) -> String {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).to_uppercase(),
        _ => String::new(),
    }
}

impl Recorder {
    async fn run(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        if command_name(cmd) == "WAIT" {
            return Ok(redis::Value::Int(1));
        }
        self.inner.req_packed_command(cmd).await
    }
}

impl ConnectionLike for Recorder {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.requests.lock().push(vec![command_name(cmd)]);
        Box::pin(self.run(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.requests
            .lock()
            .push(pipeline.cmd_iter().map(command_name).collect());
        Box::pin(async move {
            let mut out = Vec::new();
            for cmd in pipeline.cmd_iter() {
                out.push(self.run(cmd).await?);
            }
            Ok(out.into_iter().skip(offset).take(count).collect())
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_fence_waits_on_the_connection_that_ran_the_script() {
    // WAIT only covers writes of its own connection: sent on its own, it
    // could go out on a new connection after a reconnect (to a promoted
    // replica) and confirm nothing. So it must travel in one request with
    // the script that made the writes.
    let f = fixture();
    let mut conn = Recorder {
        inner: f.redis.clone(),
        requests: Arc::new(parking_lot::Mutex::new(Vec::new())),
    };
    let cfg = CacheConfig {
        wait_replicas: 1,
        ..CacheConfig::default()
    };
    for batch in [["m1", "m2"], ["m3", "m1"]] {
        let a = assign(
            &mut conn,
            &f.store,
            f.clock.as_ref(),
            &f.tokens,
            &cfg,
            "sg_g1",
            &items(&batch, None),
        )
        .await
        .unwrap();
        assert_eq!(a.seqs.len(), 2);
    }
    let requests = conn.requests.lock().clone();
    let scripts = requests
        .iter()
        .filter(|r| r.iter().any(|c| c == "EVALSHA"))
        .count();
    assert!(scripts >= 2, "the script ran: {requests:?}");
    for r in &requests {
        if r.iter().any(|c| c == "WAIT") {
            assert_eq!(
                r,
                &vec!["EVALSHA".to_string(), "WAIT".to_string()],
                "WAIT must follow the script in the same request: {requests:?}"
            );
        }
        if r.iter().any(|c| c == "EVALSHA") {
            assert!(
                r.iter().any(|c| c == "WAIT"),
                "every script run is fenced: {requests:?}"
            );
        }
    }
}
