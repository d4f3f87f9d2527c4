//! Scenario tests of the service on the embedded backends: what goes out,
//! byte for byte where OpenIM compatibility demands it, and what happens to
//! bad input.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use msgtransfer::domain::context::MsgContext;
use msgtransfer::domain::{bucket, cache_json, conversation};
use msgtransfer::embedded::history;
use msgtransfer::embedded::hook::EmbeddedHook;
use msgtransfer::embedded::log::EmbeddedLog;
use msgtransfer::embedded::redis::{EmbeddedRedis, SharedEngine, shared_engine};
use msgtransfer::embedded::store::EmbeddedStore;
use msgtransfer::metrics::Metrics;
use msgtransfer::ops::dlq;
use msgtransfer::pipeline::consumer::dlq_header;
use msgtransfer::ports::clock::ManualClock;
use msgtransfer::ports::{Clock, LogConsumer, OutRecord, Record, SeededRng};
use msgtransfer::proto::{MsgData, MsgDataToMongoByMq, PushMsgDataToMq};
use msgtransfer::service::{self, ServiceConfig, Wiring};
use prost::Message;
use tokio::sync::watch;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/openim");

struct World {
    log: EmbeddedLog,
    engine: Arc<SharedEngine>,
    store: EmbeddedStore,
    hook: EmbeddedHook,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
    cfg: ServiceConfig,
}

impl World {
    fn new(max_record_bytes: usize) -> Self {
        let clock = Arc::new(ManualClock::new(1_764_000_000_000));
        Self {
            log: EmbeddedLog::new(4, max_record_bytes, clock.clone()),
            engine: shared_engine(1),
            store: EmbeddedStore::new(),
            hook: EmbeddedHook::default(),
            clock,
            metrics: Arc::new(Metrics::default()),
            cfg: ServiceConfig::default(),
        }
    }

    fn send(&self, msg: &MsgData, op: &str) {
        self.send_raw(
            conversation::kafka_key(msg)
                .unwrap_or_default()
                .into_bytes(),
            msg.encode_to_vec(),
            op,
        );
    }

    fn send_raw(&self, key: Vec<u8>, value: Vec<u8>, op: &str) {
        let ctx = MsgContext {
            operation_id: op.into(),
            op_user_id: "opu".into(),
            platform: "2".into(),
            conn_id: "conn".into(),
        };
        self.log
            .append(OutRecord {
                topic: self.cfg.transfer.topics.to_redis.clone(),
                key: Bytes::from(key),
                value: Bytes::from(value),
                headers: ctx.to_headers().into(),
            })
            .unwrap();
    }

    /// Runs the service until both input topics are fully committed, then
    /// shuts it down gracefully.
    fn run(&self) {
        self.run_with(|_| false);
    }

    /// Like [`World::run`], calling `tick` with the tick number every 10 ms
    /// of simulated time while the service runs; the run does not end while
    /// `tick` says more is coming (returns true).
    fn run_with(&self, mut tick: impl FnMut(u32) -> bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = watch::channel(false);
            let wiring = Wiring {
                redis: EmbeddedRedis::new(self.engine.clone(), self.clock.clone()),
                store: Arc::new(self.store.clone()),
                producer: Arc::new(self.log.producer()),
                hook: Arc::new(self.hook.clone()),
                clock: self.clock.clone(),
                rng: Arc::new(SeededRng::new(5)),
                metrics: self.metrics.clone(),
            };
            let t = &self.cfg.transfer.topics;
            let transfer: Vec<Box<dyn LogConsumer>> = vec![
                Box::new(self.log.consumer("redis", &t.to_redis)),
                Box::new(self.log.consumer("redis", &t.to_redis)),
            ];
            let persist = Box::new(self.log.consumer("mongo", &t.to_mongo));
            let cfg = self.cfg.clone();
            let svc =
                tokio::spawn(
                    async move { service::run(wiring, transfer, persist, &cfg, rx).await },
                );
            for i in 0..100_000 {
                self.clock.sleep(Duration::from_millis(10)).await;
                tick(i);
                if self.log.lag("redis", &t.to_redis) == 0
                    && self.log.lag("mongo", &t.to_mongo) == 0
                {
                    break;
                }
            }
            assert_eq!(self.log.lag("redis", &t.to_redis), 0, "toRedis drained");
            tx.send(true).unwrap();
            svc.await.unwrap().unwrap();
        });
    }

    fn records(&self, topic: &Arc<str>) -> Vec<Record> {
        self.log.records(topic)
    }
}

fn vector(file: &str) -> MsgData {
    MsgData::decode(std::fs::read(format!("{DIR}/{file}")).unwrap().as_slice()).unwrap()
}

fn text(send: &str, recv: &str, id: &str) -> MsgData {
    MsgData {
        send_id: send.into(),
        recv_id: recv.into(),
        client_msg_id: id.into(),
        session_type: 1,
        msg_from: 100,
        content_type: 101,
        content: b"{\"content\":\"hi\"}".to_vec(),
        status: 1,
        ..Default::default()
    }
}

#[test]
fn openim_vectors_flow_to_push_cache_and_mongo_with_openim_formats() {
    let w = World::new(1_000_000);
    let single = vector("msgdata_single_all_fields.bin");
    w.send(&single, "op-1");
    w.send(&vector("msgdata_typing_not_stored.bin"), "op-2");
    w.send(&vector("msgdata_notification_sendmsg.bin"), "op-3");
    w.run();

    let t = &w.cfg.transfer.topics;
    let pushes: Vec<(Record, PushMsgDataToMq)> = w
        .records(&t.to_push)
        .into_iter()
        .map(|r| {
            let p = PushMsgDataToMq::decode(r.value.as_ref()).unwrap();
            (r, p)
        })
        .collect();
    // single + typing (not stored) + notification and its chat clone.
    assert_eq!(pushes.len(), 4);
    let (rec, first) = pushes
        .iter()
        .find(|(_, p)| p.msg_data.as_ref().unwrap().client_msg_id == "c-0001")
        .unwrap();
    assert_eq!(&rec.key[..], b"u100_u200");
    let keys: Vec<&str> = rec.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["operationID", "opUserID", "platform", "connID"]);
    assert_eq!(rec.headers[0].1, b"op-1");
    assert_eq!(rec.headers[3].1, b"conn");
    assert_eq!(first.conversation_id, "si_u100_u200");
    // The push record matches OpenIM's encoding of the same record, except
    // for map-entry encoding (see tests/vectors.rs).
    let expected = PushMsgDataToMq::decode(
        std::fs::read(format!("{DIR}/push_record_single.bin"))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(first, &expected);
    let typing = pushes
        .iter()
        .find(|(_, p)| p.msg_data.as_ref().unwrap().content_type == 113)
        .unwrap();
    assert_eq!(
        typing.1.msg_data.as_ref().unwrap().seq,
        0,
        "unstored: no seq"
    );

    // Cache: Go-style JSON under MSG_CACHE:<conv>:<seq>.
    let mut eng = w.engine.lock();
    let now = w.clock.now_ms();
    let json = eng
        .get_hash_field(now, b"MSG_CACHE:si_u100_u200:1", b"value")
        .unwrap();
    let mut cached = single.clone();
    cached.seq = 1;
    assert_eq!(
        String::from_utf8(json).unwrap(),
        cache_json::encode(&cached)
    );
    assert!(
        eng.get_hash_field(now, b"MSG_CACHE:n_imAdmin_u200:1", b"value")
            .is_some()
    );
    assert!(
        eng.get_hash_field(now, b"MSG_CACHE:sn_imAdmin_u200:1", b"value")
            .is_some()
    );
    assert_eq!(
        eng.get_hash_field(now, b"SEQ_USER_READ:si_u100_u200:u100", b"value"),
        Some(b"1".to_vec())
    );
    drop(eng);

    // Mongo: slot 0 of bucket 0, status sending → sent; sender read seq.
    let buckets = w.store.buckets();
    let slot = (*buckets["si_u100_u200:0"][0].msg.clone().unwrap()).clone();
    assert_eq!(slot.client_msg_id, "c-0001");
    assert_eq!(slot.status, 2);
    assert_eq!(slot.content, "{\"content\":\"hi <b>&</b>\"}");
    assert_eq!(
        w.store.read_seqs()[&("u100".to_string(), "si_u100_u200".to_string())],
        1
    );
    assert_eq!(w.store.seq_doc("si_u100_u200").unwrap().max_seq, 51);
    // New chat conversations are announced; notification ones are not.
    let announced = w.hook.conversations();
    assert!(announced.contains("si_u100_u200") && announced.contains("sn_imAdmin_u200"));
    assert!(!announced.contains("n_imAdmin_u200"));
}

#[test]
fn undecodable_records_and_unknown_session_types_go_to_the_dead_letter_topic() {
    let w = World::new(1_000_000);
    w.send(&text("a", "b", "m1"), "op-1");
    w.send_raw(b"a_b".to_vec(), vec![0xff, 0xff, 0x01], "op-bad");
    let mut odd = text("a", "b", "m-odd");
    odd.session_type = 9;
    w.send_raw(b"a_b".to_vec(), odd.encode_to_vec(), "op-odd");
    w.send(&text("a", "b", "m2"), "op-2");
    w.run();

    let t = &w.cfg.transfer.topics;
    let dlq = w.records(&t.dlq);
    assert_eq!(dlq.len(), 2);
    let bad = dlq
        .iter()
        .find(|r| r.value[..] == [0xff, 0xff, 0x01])
        .unwrap();
    let header = |r: &Record, k: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        bad.headers[0].1, b"op-bad",
        "original headers keep their positions"
    );
    assert!(header(bad, dlq_header::REASON).unwrap().contains("MsgData"));
    assert_eq!(header(bad, dlq_header::SOURCE_TOPIC).unwrap(), "toRedis");
    assert_eq!(header(bad, dlq_header::SOURCE_OFFSET).unwrap(), "1");
    assert_eq!(&bad.key[..], b"a_b");
    let odd_dl = dlq
        .iter()
        .find(|r| {
            header(r, dlq_header::REASON)
                .unwrap()
                .contains("session type")
        })
        .unwrap();
    assert_eq!(
        MsgData::decode(odd_dl.value.as_ref())
            .unwrap()
            .client_msg_id,
        "m-odd"
    );
    // The records around them were processed with consecutive seqs.
    let seqs: Vec<i64> = w
        .records(&t.to_push)
        .iter()
        .map(|r| history::pushed(&r.value).expect("a toPush record").seq)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(Metrics::get(&w.metrics.dlq_records), 2);
}

/// Every kind of bad input, between good records: each bad one ends in the
/// dead-letter topic whole (or is processed, where OpenIM processes it), the
/// records after it are unaffected, and every offset is committed. Then an
/// operator raises the limit one of them broke and replays it: it is
/// processed once, even when replayed twice.
#[test]
fn bad_input_goes_to_the_dead_letter_topic_and_a_replay_is_processed_once() {
    let mut w = World::new(1_000_000);
    w.cfg.transfer.limits.content_bytes = 2048;
    w.send(&text("a", "b", "m1"), "op-1");
    // A truncated protobuf.
    let mut cut = text("a", "b", "m-trunc").encode_to_vec();
    cut.truncate(cut.len() - 6); // inside `content`
    assert!(MsgData::decode(cut.as_slice()).is_err());
    w.send_raw(b"a_b".to_vec(), cut, "op-trunc");
    // Over the content limit.
    let mut big = text("a", "b", "m-big");
    big.content = format!("{{\"content\":\"{}\"}}", "x".repeat(3000)).into_bytes();
    w.send(&big, "op-big");
    // Invalid UTF-8 in a string field.
    let mut nick = text("a", "b", "m-utf8");
    nick.sender_nickname = "NICKNAME".into();
    let mut raw = nick.encode_to_vec();
    let at = raw.windows(8).position(|x| x == b"NICKNAME").unwrap();
    raw[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    w.send_raw(b"a_b".to_vec(), raw, "op-utf8");
    // A read receipt whose JSON is broken: OpenIM stores it and skips the
    // read seq, and so do we.
    let mut receipt = text("a", "b", "m-receipt");
    receipt.content_type = 2200;
    receipt.content = b"{\"detail\": \"{not json".to_vec();
    w.send(&receipt, "op-receipt");
    // An unknown session type.
    let mut odd = text("a", "b", "m-odd");
    odd.session_type = 9;
    w.send_raw(b"a_b".to_vec(), odd.encode_to_vec(), "op-odd");
    w.send(&text("a", "b", "m2"), "op-2");
    w.run();

    let t = w.cfg.transfer.topics.clone();
    let letters = dlq::select(&w.records(&t.dlq), &dlq::Selection::default());
    let summary: Vec<(i64, bool)> = letters
        .iter()
        .map(|d| (d.source_offset.unwrap(), d.source_topic == "toRedis"))
        .collect();
    assert_eq!(summary, vec![(1, true), (2, true), (3, true), (5, true)]);
    let reasons: Vec<&str> = letters.iter().map(|d| d.reason.as_str()).collect();
    assert!(
        reasons[0].contains("not an sdkws.MsgData"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("over limit: content of message \"m-big\"")
            && reasons[1].contains("maxContentBytes"),
        "{}",
        reasons[1]
    );
    assert!(reasons[2].contains("UTF-8"), "{}", reasons[2]);
    assert!(reasons[3].contains("session type"), "{}", reasons[3]);
    for d in &letters {
        assert_eq!(d.headers.len(), 4, "the original headers travel along");
        assert!(d.time_ms.is_some());
    }
    // Whole: the dead letter carries the refused bytes untouched.
    assert_eq!(MsgData::decode(letters[1].value.as_ref()).unwrap(), big);

    // The records around them were processed, in order, with no gaps.
    let pushed = |w: &World| -> Vec<(String, i64)> {
        w.records(&t.to_push)
            .iter()
            .map(|r| {
                let m = history::pushed(&r.value).expect("a toPush record");
                (m.client_msg_id, m.seq)
            })
            .collect()
    };
    let ids = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(i, s)| (i.to_string(), *s)).collect()
    };
    assert_eq!(pushed(&w), ids(&[("m1", 1), ("m-receipt", 2), ("m2", 3)]));
    assert_eq!(w.log.lag("redis", &t.to_redis), 0, "every offset committed");
    assert_eq!(w.log.lag("mongo", &t.to_mongo), 0);
    assert_eq!(Metrics::get(&w.metrics.dlq_records), 4);

    // The operator raises the limit and replays the refused record, twice.
    w.cfg.transfer.limits.content_bytes = 1_000_000;
    let over = dlq::Selection {
        reason_contains: Some("over limit".into()),
        ..Default::default()
    };
    let chosen = dlq::select(&w.records(&t.dlq), &over);
    assert_eq!(chosen.len(), 1);
    let inputs = [t.to_redis.clone(), t.to_mongo.clone()];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for _ in 0..2 {
        let n = rt
            .block_on(dlq::replay(&w.log.producer(), &chosen, &inputs))
            .unwrap();
        assert_eq!(n, 1);
    }
    w.run();

    let big_pushes: Vec<i64> = pushed(&w)
        .into_iter()
        .filter(|(id, _)| id == "m-big")
        .map(|(_, seq)| seq)
        .collect();
    assert!(
        !big_pushes.is_empty() && big_pushes.iter().all(|s| *s == 4),
        "{big_pushes:?}"
    );
    let buckets = w.store.buckets();
    let stored: Vec<(usize, String)> = buckets["si_a_b:0"]
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.msg.as_ref().map(|m| (i, m.client_msg_id.clone())))
        .collect();
    let want: Vec<(usize, String)> = ["m1", "m-receipt", "m2", "m-big"]
        .iter()
        .enumerate()
        .map(|(i, id)| (i, id.to_string()))
        .collect();
    assert_eq!(
        stored, want,
        "the replayed message is stored once, at seq 4"
    );
    assert_eq!(w.records(&t.dlq).len(), 4, "nothing new was refused");
    assert_eq!(w.log.lag("redis", &t.to_redis), 0);
}

/// `sendTime` is whatever the sender put there; the latency metric once
/// overflowed on i64::MIN (found by the `to_mongo` fuzz target).
#[test]
fn messages_with_extreme_send_times_are_persisted() {
    let w = World::new(1_000_000);
    for (i, t) in [i64::MIN, -1, i64::MAX].into_iter().enumerate() {
        let mut m = text("a", "b", &format!("t{i}"));
        m.send_time = t;
        m.create_time = t;
        w.send(&m, "op");
    }
    w.run();
    let buckets = w.store.buckets();
    let sent: Vec<i64> = buckets["si_a_b:0"]
        .iter()
        .filter_map(|s| s.msg.as_ref().map(|m| m.send_time))
        .collect();
    assert_eq!(sent, vec![i64::MIN, -1, i64::MAX]);
}

#[test]
fn read_receipts_raise_mongo_read_seqs_and_never_lower_them() {
    let w = World::new(1_000_000);
    for i in 0..10 {
        w.send(&text("u100", "u200", &format!("m{i}")), "op");
    }
    // The vector leaves isSendMsg out, which reads as true: each receipt
    // would also become a chat message from u200. OpenIM's read-receipt
    // notifications set it false, as here, so only the receipt counts.
    let receipt = || {
        let mut r = vector("msgdata_has_read_receipt.bin");
        r.options.insert("isSendMsg".into(), false);
        r
    };
    w.send(&receipt(), "op-r");
    let mut lower = receipt();
    lower.client_msg_id = "c-read-2".into();
    lower.content = serde_json::to_vec(&serde_json::json!({
        "detail": "{\"markAsReadUserID\":\"u200\",\"conversationID\":\"si_u100_u200\",\"seqs\":[3],\"hasReadSeq\":2}"
    }))
    .unwrap();
    w.send(&lower, "op-r2");
    let mut broken = receipt();
    broken.client_msg_id = "c-read-3".into();
    broken.content = b"{\"detail\":\"{not json".to_vec();
    w.send(&broken, "op-r3");
    w.run();
    let reads = w.store.read_seqs();
    assert_eq!(reads[&("u200".to_string(), "si_u100_u200".to_string())], 9);
    assert_eq!(reads[&("u100".to_string(), "si_u100_u200".to_string())], 10);
    // A receipt with broken content is still a stored message (as in OpenIM).
    let stored: Vec<String> = w
        .store
        .buckets()
        .values()
        .flat_map(|b| {
            b.iter()
                .filter_map(|s| s.msg.as_ref().map(|m| m.client_msg_id.clone()))
        })
        .collect();
    assert!(stored.contains(&"c-read-3".to_string()));
}

#[test]
fn persistence_records_are_contiguous_runs_under_the_size_limit() {
    // A small producer limit forces many toMongo records per batch.
    let w = World::new(4096 + 2000);
    for i in 0..250 {
        let mut m = text("x", "y", &format!("m{i}"));
        m.content = vec![b'z'; 300];
        w.send(&m, "op");
    }
    w.run();
    let t = &w.cfg.transfer.topics;
    let recs = w.records(&t.to_mongo);
    assert!(recs.len() > 10, "split into many records: {}", recs.len());
    let mut next = 1;
    for r in &recs {
        assert!(r.value.len() + r.key.len() <= 6096);
        let m = MsgDataToMongoByMq::decode(r.value.as_ref()).unwrap();
        assert_eq!(m.last_seq, m.msg_data[0].seq - 1);
        for (i, msg) in m.msg_data.iter().enumerate() {
            assert_eq!(msg.seq, m.msg_data[0].seq + i as i64, "contiguous run");
        }
        assert_eq!(m.msg_data[0].seq, next, "in seq order across records");
        next = m.msg_data.last().unwrap().seq + 1;
    }
    assert_eq!(next, 251);
    // 250 messages over buckets 0, 1 and 2; every slot where it belongs.
    let buckets = w.store.buckets();
    for seq in 1..=250i64 {
        let slot = &buckets[&bucket::doc_id("si_x_y", seq)][bucket::slot(seq)];
        assert_eq!(slot.msg.as_ref().unwrap().seq, seq);
    }
}

#[test]
fn a_graceful_shutdown_commits_what_is_done() {
    let w = World::new(1_000_000);
    for i in 0..50 {
        w.send(&text("a", "b", &format!("m{i}")), "op");
    }
    w.run();
    let t = &w.cfg.transfer.topics;
    assert_eq!(w.log.lag("redis", &t.to_redis), 0);
    assert_eq!(w.log.lag("mongo", &t.to_mongo), 0);
    // A second run over the same log finds nothing to redo.
    let before = w.log.len(&t.to_push);
    w.run();
    assert_eq!(w.log.len(&t.to_push), before);
}

#[test]
fn rebalances_mid_stream_lose_and_duplicate_nothing() {
    use msgtransfer::check;
    use msgtransfer::embedded::history;

    let w = World::new(1_000_000);
    let send = |from: u32, to: u32| {
        for i in from..to {
            let (a, b) = (format!("u{}", i % 17), format!("u{}", 100 + i % 5));
            w.send(&text(&a, &b, &format!("m{i}")), &format!("op{i}"));
        }
    };
    // Traffic keeps arriving for 12 ticks. Meanwhile a third member joins
    // the group, takes a share of the partitions (revoking them from the
    // running loops, whose batches are in flight), sits there without
    // polling, and leaves again; then another one does.
    let mut ghost = None;
    let mut lag_when_joining = Vec::new();
    w.run_with(|i| {
        if i < 12 {
            send(i * 250, (i + 1) * 250);
        }
        match i {
            2 | 7 => {
                lag_when_joining.push(w.log.lag("redis", "toRedis"));
                ghost = Some(w.log.consumer("redis", "toRedis"));
            }
            4 | 9 => ghost = None,
            _ => {}
        }
        i < 12
    });
    drop(ghost);
    assert!(
        lag_when_joining.iter().all(|l| *l > 0),
        "the rebalances happen mid-stream: {lag_when_joining:?}"
    );
    let (h, misplaced) = {
        let dump = history::dump(&mut w.engine.lock(), w.clock.now_ms());
        history::collect(&w.log, &w.cfg.transfer.topics, &w.store, &dump)
    };
    let r = check::check(&h);
    assert_eq!((r.anomalies(), misplaced), (0, 0), "{:?}", r.examples);
    assert_eq!(r.messages, 3000);
    assert_eq!(r.persisted, 3000);
}
