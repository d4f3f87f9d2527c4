//! `msgtransfer run` as a child process on the real backends: `load`
//! puts seeded OpenIM traffic (with producer duplicates) into `toRedis` and
//! waits on the daemon's `/metrics` until it is persisted; `audit`, reading
//! back real Kafka, Redis and MongoDB, finds every message pushed, cached
//! and persisted once at one seq; SIGTERM then drains and exits 0.
//!
//! Needs `KAFKA_BROKERS`, `REDIS_URL` and `MONGODB_URI` (see
//! `tests/support`). Topics, groups and the Mongo database are this run's
//! own; Redis database 7 belongs to this test and is emptied first.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use msgtransfer::ops::{audit, load};
use msgtransfer::ports::Clock;

const MESSAGES: u64 = 3000;
const REDIS_DB: u32 = 7;
const SIGTERM_REDIS_DB: u32 = 8;

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

/// The `IMENV_*` overrides that point the shipped config folder at this
/// run's topics, groups, Redis database and Mongo database; the daemon and
/// `load`/`audit` share them.
fn overrides(
    run: &str,
    metrics_port: u16,
    redis_db: u32,
    mongo_db: &str,
) -> BTreeMap<String, String> {
    [
        ("IMENV_KAFKA_ADDRESS", support::kafka_brokers()),
        ("IMENV_KAFKA_TOREDISTOPIC", format!("{run}.toRedis")),
        ("IMENV_KAFKA_TOMONGOTOPIC", format!("{run}.toMongo")),
        ("IMENV_KAFKA_TOPUSHTOPIC", format!("{run}.toPush")),
        ("IMENV_KAFKA_TOREDISGROUPID", format!("{run}.redis")),
        ("IMENV_KAFKA_TOMONGOGROUPID", format!("{run}.mongo")),
        (
            "IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_DEADLETTERTOPIC",
            format!("{run}.dlq"),
        ),
        ("IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_ENABLE", "true".into()),
        (
            "IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_PORTS",
            metrics_port.to_string(),
        ),
        ("IMENV_REDIS_ADDRESS", support::redis_address()),
        ("IMENV_REDIS_DB", redis_db.to_string()),
        ("IMENV_MONGODB_URI", support::mongodb_uri()),
        ("IMENV_MONGODB_DATABASE", mongo_db.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `msgtransfer run` with `env` and waits until its metrics port
/// answers.
async fn start_daemon(env: &BTreeMap<String, String>, metrics_port: u16) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_msgtransfer"))
        .args(["run", "-c", CONFIG, "-i", "0"])
        .envs(env)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting msgtransfer run");
    let clock = msgtransfer::ports::clock::SystemClock::new();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok() {
            break;
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
    child
}

/// Sends SIGTERM and returns the exit status, failing the test if the
/// process is still there 10 s later.
async fn sigterm(child: &mut std::process::Child) -> std::process::ExitStatus {
    let clock = msgtransfer::ports::clock::SystemClock::new();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!("msgtransfer did not exit within 10 s of SIGTERM")
}

/// One run's own topics (4 partitions each), Redis database (emptied),
/// Mongo database and metrics port, the config that names them, and a
/// place for `load`'s record.
struct Stand {
    run: String,
    db: mongodb::Database,
    env: BTreeMap<String, String>,
    cfg: msgtransfer::config::Config,
    metrics_port: u16,
    record_path: std::path::PathBuf,
}

async fn stand(tag: &str, redis_db: u32) -> Stand {
    let run = support::unique(tag);
    for t in ["toRedis", "toMongo", "toPush", "dlq"] {
        support::kafka_topic(&format!("{run}.{t}"), 4).await;
    }
    support::redis_db_flushed(redis_db).await;
    let db = support::mongo_db(tag).await;
    let metrics_port = free_port();
    let env = overrides(&run, metrics_port, redis_db, db.name());
    let cfg = msgtransfer::config::load(std::path::Path::new(CONFIG), 0, &env).unwrap();
    let record_path = std::env::temp_dir().join(format!("{run}.load.json"));
    Stand {
        run,
        db,
        env,
        cfg,
        metrics_port,
        record_path,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_moves_openim_traffic_through_real_backends_and_drains_on_sigterm() {
    let Stand {
        run,
        db,
        env,
        cfg,
        metrics_port,
        record_path,
    } = stand("daemon", REDIS_DB).await;
    let mut child = start_daemon(&env, metrics_port).await;

    // OpenIM traffic with producer duplicates, until the daemon has
    // persisted it.
    let outcome = load::run(
        &cfg,
        &load::LoadArgs {
            messages: MESSAGES,
            conversations: 40,
            seed: 23,
            rate: 0.0,
            duplicate_rate: 0.05,
            record: record_path.clone(),
            progress: false,
            wait: Some(Duration::from_secs(240)),
        },
    )
    .await
    .unwrap();
    assert!(outcome.record.records_sent > MESSAGES, "with duplicates");
    let persisted = outcome.persisted.expect("waited");
    assert!(persisted.persisted >= persisted.stored);
    assert!(persisted.p50_ms.is_some());
    assert_eq!(
        load::LoadRecord::read(&record_path).unwrap(),
        outcome.record
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
    assert!(counter("msg_insert_redis_success_total") >= persisted.stored);
    assert!(counter("msg_insert_mongo_success_total") > 0);
    assert!(counter("msgtransfer_records_in_total") >= outcome.record.records_sent);
    assert!(
        counter("msgtransfer_dedup_hits_total") > 0,
        "producer duplicates were sent"
    );
    assert_eq!(
        counter("msgtransfer_e2e_latency_seconds_count"),
        counter("msgtransfer_msgs_persisted_total")
    );
    assert!(body.contains(&format!(
        "msgtransfer_consumer_lag{{topic=\"{run}.toRedis\"}} 0"
    )));
    assert_eq!(http_get(metrics_port, "/healthz").0, 200);
    assert_eq!(http_get(metrics_port, "/readyz").0, 200);
    assert_eq!(http_get(metrics_port, "/nope").0, 404);

    // SIGTERM: drain and exit 0 within 10 s.
    let status = sigterm(&mut child).await;
    assert!(status.success(), "exit status {status}");

    // The audit reads real Kafka, Redis and MongoDB back.
    let report = audit::run(&cfg, Some(&outcome.record), |_| {})
        .await
        .unwrap();
    let r = &report.check;
    assert_eq!(report.anomalies(), 0, "{}", audit::summary(&report));
    assert_eq!(r.messages, MESSAGES);
    assert_eq!(r.pushed, MESSAGES);
    assert_eq!(r.persisted, r.stored);
    assert_eq!(r.cached, r.stored);
    assert_eq!(r.stored, persisted.stored);

    // Without the record the stored state alone is checked, and a message
    // slipped into a slot that the cache gives to another one is caught.
    let clean = audit::run(&cfg, None, |_| {}).await.unwrap();
    assert_eq!(clean.anomalies(), 0, "{}", audit::summary(&clean));
    use mongodb::bson::{Document, doc};
    let msg = db.collection::<Document>("msg");
    let b = msg.find_one(doc! {}).await.unwrap().unwrap();
    msg.update_one(
        doc! {"_id": b.get("_id").unwrap().clone()},
        doc! {"$set": {"msgs.0.msg.client_msg_id": "intruder"}},
    )
    .await
    .unwrap();
    let tampered = audit::run(&cfg, None, |_| {}).await.unwrap();
    assert_eq!(
        tampered.check.seq_conflicts,
        1,
        "{}",
        audit::summary(&tampered)
    );
    let _ = std::fs::remove_file(record_path);
    db.drop().await.unwrap();
}

/// SIGTERM while a load is being processed: the daemon exits 0 within
/// 10 s; restarted, it finishes the rest, and the audit finds every
/// message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_then_restart_loses_and_duplicates_nothing() {
    let clock = msgtransfer::ports::clock::SystemClock::new();
    let Stand {
        db,
        env,
        cfg,
        metrics_port,
        record_path,
        ..
    } = stand("sigterm", SIGTERM_REDIS_DB).await;
    let mut child = start_daemon(&env, metrics_port).await;

    let outcome = load::run(
        &cfg,
        &load::LoadArgs {
            messages: MESSAGES,
            conversations: 60,
            seed: 31,
            rate: 0.0,
            duplicate_rate: 0.0,
            record: record_path.clone(),
            progress: false,
            wait: None,
        },
    )
    .await
    .unwrap();
    // Let it get going, then stop it in the middle.
    clock.sleep(Duration::from_millis(500)).await;
    let (_, body) = http_get(metrics_port, "/metrics");
    let status = sigterm(&mut child).await;
    assert!(status.success(), "exit status {status}");
    let before = audit::run(&cfg, Some(&outcome.record), |_| {})
        .await
        .unwrap();
    assert!(
        before.check.persisted < before.check.stored,
        "the daemon finished before SIGTERM; nothing was tested:\n{body}"
    );

    // Restarted, it takes over from the committed offsets.
    let mut child = start_daemon(&env, metrics_port).await;
    let mut report = before;
    for _ in 0..240 {
        report = audit::run(&cfg, Some(&outcome.record), |_| {})
            .await
            .unwrap();
        if report.anomalies() == 0 {
            break;
        }
        clock.sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(report.anomalies(), 0, "{}", audit::summary(&report));
    assert_eq!(report.check.messages, MESSAGES);
    assert_eq!(report.check.persisted, report.check.stored);
    let status = sigterm(&mut child).await;
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_file(record_path);
    db.drop().await.unwrap();
}
