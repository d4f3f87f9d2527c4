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

use std::time::Duration;

use msgtransfer::ops::{audit, load};
use msgtransfer::ports::Clock;
use support::daemon::{Stand, http_get};

const MESSAGES: u64 = 3000;
const REDIS_DB: u32 = 7;
const SIGTERM_REDIS_DB: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_moves_openim_traffic_through_real_backends_and_drains_on_sigterm() {
    let stand = Stand::new("daemon", REDIS_DB).await;
    let Stand {
        run,
        db,
        cfg,
        metrics_ports,
        record_path,
        ..
    } = &stand;
    let metrics_port = metrics_ports[0];
    let mut daemon = stand.start(0).await;

    // OpenIM traffic with producer duplicates, until the daemon has
    // persisted it.
    let outcome = load::run(
        cfg,
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
    assert_eq!(load::LoadRecord::read(record_path).unwrap(), outcome.record);

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
    let status = daemon.sigterm().await;
    assert!(status.success(), "exit status {status}");

    // The audit reads real Kafka, Redis and MongoDB back.
    let report = audit::run(cfg, Some(&outcome.record), |_| {})
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
    let clean = audit::run(cfg, None, |_| {}).await.unwrap();
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
    let tampered = audit::run(cfg, None, |_| {}).await.unwrap();
    assert_eq!(
        tampered.check.seq_conflicts,
        1,
        "{}",
        audit::summary(&tampered)
    );
    stand.clean_up().await;
}

/// SIGTERM while a load is being processed: the daemon exits 0 within
/// 10 s; restarted, it finishes the rest, and the audit finds every
/// message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_then_restart_loses_and_duplicates_nothing() {
    let clock = msgtransfer::ports::clock::SystemClock::new();
    let stand = Stand::new("sigterm", SIGTERM_REDIS_DB).await;
    let mut daemon = stand.start(0).await;
    let record = stand.load(MESSAGES, 60, 31, 0.0).await;
    // Let it get going, then stop it in the middle.
    clock.sleep(Duration::from_millis(500)).await;
    let body = daemon.metrics();
    let status = daemon.sigterm().await;
    assert!(status.success(), "exit status {status}");
    let before = audit::run(&stand.cfg, Some(&record), |_| {}).await.unwrap();
    assert!(
        before.check.persisted < before.check.stored,
        "the daemon finished before SIGTERM; nothing was tested:\n{body}"
    );

    // Restarted, it takes over from the committed offsets.
    let mut daemon = stand.start(0).await;
    let report = stand
        .audit_until_clean(
            &record,
            &audit::Options::default(),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(report.check.messages, MESSAGES);
    let status = daemon.sigterm().await;
    assert!(status.success(), "exit status {status}");
    stand.clean_up().await;
}
