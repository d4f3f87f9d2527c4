//! `msgtransfer run` as a child process on the real backends: seeded OpenIM
//! traffic (with producer duplicates) goes into `toRedis`, and the checker,
//! reading back real Kafka, Redis and MongoDB, finds every message pushed,
//! cached and persisted once at one seq; SIGTERM then drains and exits 0.
//!
//! Needs `KAFKA_BROKERS`, `REDIS_URL` and `MONGODB_URI` (see
//! `tests/support`). Topics, groups and the Mongo database are this run's
//! own; Redis database 7 belongs to this test and is emptied first.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use msgtransfer::backends::kafka::{KafkaConsumer, KafkaProducer, KafkaSettings};
use msgtransfer::cache::RedisDump;
use msgtransfer::check::{self, History, Input, Seen};
use msgtransfer::demo::workload::{WorkloadSpec, generate};
use msgtransfer::domain::categorise::categorise;
use msgtransfer::embedded::history;
use msgtransfer::ports::{Clock, ConsumerEvent, LogConsumer, LogProducer, OutRecord};
use msgtransfer::proto::{MsgData, MsgDataToMongoByMq, PushMsgDataToMq};
use prost::Message;

const MESSAGES: u64 = 3000;
const REDIS_DB: u32 = 7;

fn settings() -> KafkaSettings {
    KafkaSettings {
        brokers: vec![support::kafka_brokers()],
        session_timeout: Duration::from_secs(6),
        ..KafkaSettings::default()
    }
}

/// Every record of `topic` (which must be complete), per partition.
async fn read_topic(topic: &str, expect_at_least: usize) -> BTreeMap<i32, Vec<Vec<u8>>> {
    let mut c = KafkaConsumer::new(&settings(), &support::unique("reader"), topic).unwrap();
    let mut out: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut n = 0;
    let mut idle = 0;
    while idle < 20 || n < expect_at_least {
        match c.poll(1000, Duration::from_millis(100)).await.unwrap() {
            ConsumerEvent::Records(rs) => {
                idle = 0;
                for r in rs {
                    n += 1;
                    out.entry(r.partition).or_default().push(r.value.to_vec());
                }
            }
            _ => idle += 1,
        }
        assert!(
            idle < 600,
            "{topic}: only {n} records of at least {expect_at_least}"
        );
    }
    out
}

/// A plain HTTP GET on 127.0.0.1: status code and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_moves_openim_traffic_through_real_backends_and_drains_on_sigterm() {
    let clock = msgtransfer::ports::clock::SystemClock::new();
    let run = support::unique("d");
    let (to_redis, to_mongo, to_push, dlq) = (
        format!("{run}.toRedis"),
        format!("{run}.toMongo"),
        format!("{run}.toPush"),
        format!("{run}.dlq"),
    );
    for t in [&to_redis, &to_mongo, &to_push, &dlq] {
        support::kafka_topic(t, 4).await;
    }
    let mut redis = support::redis_db_flushed(REDIS_DB).await;
    let db = support::mongo_db("daemon").await;

    // The daemon, on the shipped config folder with this run's names.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_msgtransfer"))
        .args(["run", "-c", config, "-i", "0"])
        .env("IMENV_KAFKA_ADDRESS", support::kafka_brokers())
        .env("IMENV_KAFKA_TOREDISTOPIC", &to_redis)
        .env("IMENV_KAFKA_TOMONGOTOPIC", &to_mongo)
        .env("IMENV_KAFKA_TOPUSHTOPIC", &to_push)
        .env("IMENV_KAFKA_TOREDISGROUPID", format!("{run}.redis"))
        .env("IMENV_KAFKA_TOMONGOGROUPID", format!("{run}.mongo"))
        .env(
            "IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_DEADLETTERTOPIC",
            &dlq,
        )
        .env("IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_ENABLE", "true")
        .env(
            "IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_PORTS",
            metrics_port.to_string(),
        )
        .env("IMENV_REDIS_ADDRESS", support::redis_address())
        .env("IMENV_REDIS_DB", REDIS_DB.to_string())
        .env("IMENV_MONGODB_URI", support::mongodb_uri())
        .env("IMENV_MONGODB_DATABASE", db.name())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting msgtransfer run");

    // OpenIM traffic with producer duplicates.
    let work = generate(&WorkloadSpec {
        messages: MESSAGES,
        conversations: 40,
        seed: 23,
        duplicate_rate: 0.05,
        topic: Arc::from(to_redis.as_str()),
        start_ms: 1_764_000_000_000,
    });
    let mut inputs = Vec::new();
    for rec in &work.records {
        let m = MsgData::decode(rec.value.as_ref()).unwrap();
        for u in categorise(m).unwrap() {
            inputs.push(Input {
                conversation_id: u.conversation_id,
                client_msg_id: u.msg.client_msg_id,
                stored: u.stored,
            });
        }
    }
    let producer = KafkaProducer::new(&settings()).unwrap();
    let acks: Vec<_> = work
        .records
        .iter()
        .map(|r| producer.send(OutRecord { ..r.clone() }))
        .collect();
    for a in acks {
        a.await.unwrap();
    }

    // Wait until Mongo holds every stored message.
    let stored: std::collections::BTreeSet<(String, String)> = inputs
        .iter()
        .filter(|i| i.stored)
        .map(|i| (i.conversation_id.clone(), i.client_msg_id.clone()))
        .collect();
    let mut persisted = Vec::new();
    for _ in 0..720 {
        persisted.clear();
        let buckets: Vec<Document> = db
            .collection::<Document>("msg")
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for b in &buckets {
            let doc_id = b.get_str("doc_id").unwrap();
            let conv = doc_id.rsplit_once(':').unwrap().0.to_string();
            for slot in b.get_array("msgs").unwrap() {
                if let Ok(m) = slot.as_document().unwrap().get_document("msg") {
                    persisted.push(Seen {
                        conversation_id: conv.clone(),
                        client_msg_id: m.get_str("client_msg_id").unwrap().to_string(),
                        seq: m.get_i64("seq").unwrap(),
                    });
                }
            }
        }
        if persisted.len() >= stored.len() {
            break;
        }
        clock.sleep(Duration::from_millis(250)).await;
    }
    assert!(
        persisted.len() >= stored.len(),
        "{} of {} persisted",
        persisted.len(),
        stored.len()
    );

    // The metrics endpoint counts what happened, under OpenIM's names.
    let (status, body) = http_get(metrics_port, "/metrics");
    assert_eq!(status, 200, "{body}");
    let counter = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(counter("msg_insert_redis_success_total") >= stored.len() as u64);
    assert!(counter("msg_insert_mongo_success_total") > 0);
    assert!(counter("msgtransfer_records_in_total") >= work.records.len() as u64);
    assert!(
        counter("msgtransfer_dedup_hits_total") > 0,
        "producer duplicates were sent"
    );
    assert_eq!(http_get(metrics_port, "/healthz").0, 200);
    assert_eq!(http_get(metrics_port, "/readyz").0, 200);
    assert_eq!(http_get(metrics_port, "/nope").0, 404);

    // SIGTERM: drain and exit 0 within 10 s.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("msgtransfer did not exit within 10 s of SIGTERM")
    });
    assert!(status.success(), "exit status {status}");

    // Everything the checker needs, read back from the real servers.
    let pushes = read_topic(&to_push, MESSAGES as usize).await;
    let mongo_records = read_topic(&to_mongo, 1).await;
    let mut h = History {
        inputs,
        persisted,
        ..History::default()
    };
    h.pushes = pushes
        .values()
        .map(|vs| {
            vs.iter()
                .map(|v| {
                    let p = PushMsgDataToMq::decode(v.as_slice()).unwrap();
                    let m = p.msg_data.unwrap_or_default();
                    Seen {
                        conversation_id: p.conversation_id,
                        client_msg_id: m.client_msg_id,
                        seq: m.seq,
                    }
                })
                .collect()
        })
        .collect();
    h.persistence_records = mongo_records
        .values()
        .map(|vs| {
            vs.iter()
                .flat_map(|v| {
                    let r = MsgDataToMongoByMq::decode(v.as_slice()).unwrap();
                    let conv = r.conversation_id.clone();
                    r.msg_data.into_iter().map(move |m| Seen {
                        conversation_id: conv.clone(),
                        client_msg_id: m.client_msg_id,
                        seq: m.seq,
                    })
                })
                .collect()
        })
        .collect();
    let dump = RedisDump::read(&mut redis).await.unwrap();
    let misplaced = history::add_redis(&mut h, &dump);
    let r = check::check(&h);
    assert_eq!((r.anomalies(), misplaced), (0, 0), "{:?}", r.examples);
    assert_eq!(r.messages, MESSAGES);
    assert_eq!(r.pushed, MESSAGES);
    assert_eq!(r.persisted, r.stored);
    assert_eq!(r.cached, r.stored);
    db.drop().await.unwrap();
}
