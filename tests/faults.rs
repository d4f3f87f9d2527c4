//! Faults on the real backends, with `msgtransfer run` as a child process:
//! `kill -9` of the daemon ten times under load, a rebalance between two
//! daemons when one is killed and restarted, a Redis restart that loses
//! everything, a FerretDB killed and restarted, bad configuration, a
//! malformed record, and an operator's `dlq list`/`dlq replay`. After each,
//! `audit` reads real Kafka, Redis and MongoDB back and must find every
//! message pushed and persisted once, at one seq, in order.
//!
//! Needs `KAFKA_BROKERS`, `REDIS_URL` and `MONGODB_URI` (see
//! `tests/support`); the Redis and FerretDB that get killed are private
//! processes on free ports (`tests/support/servers.rs`). Every run has its
//! own topics, groups and Mongo database; Redis databases 9–12 of the
//! shared server belong to this file.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use msgtransfer::ops::{audit, load};
use msgtransfer::ports::clock::SystemClock;
use msgtransfer::ports::rng::SeededRng;
use msgtransfer::ports::{Clock, Rng};
use support::daemon::{CONFIG, Endpoints, Stand, metric};
use support::servers::{FerretServer, RedisCluster, RedisServer, SentinelServer};

const CRASH_REDIS_DB: u32 = 9;
const REBALANCE_REDIS_DB: u32 = 10;
const DLQ_REDIS_DB: u32 = 11;
const DLQ_CLI_REDIS_DB: u32 = 12;

/// The heavy tests take turns: each loads the shared FerretDB hard
/// enough that two at once on 2 cores would measure the machine, not the
/// fault.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a daemon may take to finish the rest after the last fault.
const DRAIN: Duration = Duration::from_secs(240);

const SESSION_TIMEOUT: &str = "IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_SESSIONTIMEOUT";
const STATIC_MEMBERSHIP: &str = "IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_STATICMEMBERSHIP";

/// Starts producing `messages` messages at `rate` per second in the
/// background; the task returns the load record.
fn load_in_background(
    stand: &Stand,
    messages: u64,
    conversations: u64,
    seed: u64,
    rate: f64,
    duplicate_rate: f64,
) -> tokio::task::JoinHandle<load::LoadRecord> {
    let cfg = stand.cfg.clone();
    let args = load::LoadArgs {
        messages,
        conversations,
        seed,
        rate,
        duplicate_rate,
        record: stand.record_path.clone(),
        progress: false,
        wait: None,
    };
    tokio::spawn(async move { load::run(&cfg, &args).await.unwrap().record })
}

/// Persisted messages the daemon has counted since it started.
fn persisted(daemon: &support::daemon::Daemon) -> f64 {
    metric(&daemon.metrics(), "msgtransfer_msgs_persisted_total").unwrap_or(0.0)
}

/// Waits until the daemon has persisted at least `n` messages (this
/// process lifetime), for at most 60 s.
async fn until_persisted(daemon: &support::daemon::Daemon, n: f64) {
    let clock = SystemClock::new();
    for _ in 0..600 {
        if persisted(daemon) >= n {
            return;
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the daemon persisted fewer than {n} messages in 60 s; log: {}",
        daemon.log_path.display()
    );
}

/// `kill -9` at ten random points while traffic is being produced, each
/// time restarted at once. Static membership gives the restarted process
/// its partitions back at once, so every kill lands in the middle of real
/// work (batches in Redis, produces in flight, Mongo writes unacknowledged,
/// offsets uncommitted). Producer duplicates ride along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_ten_times_under_load_loses_and_duplicates_nothing() {
    let _turn = TURN.lock().await;
    let clock = SystemClock::new();
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b11);
    println!("kill points from CRASH_SEED={seed}");
    let rng = SeededRng::new(seed);
    let mut stand = Stand::new("crash", CRASH_REDIS_DB).await;
    stand
        .set(SESSION_TIMEOUT, "6s")
        .set(STATIC_MEMBERSHIP, "true");
    let mut daemon = stand.start(0).await;
    let producing = load_in_background(&stand, 4000, 80, 41, 200.0, 0.05);

    let mut kills = Vec::new();
    for _ in 0..10 {
        let after_ms = 300 + rng.next_u64() % 1500;
        clock.sleep(Duration::from_millis(after_ms)).await;
        let done_by_this_process = persisted(&daemon);
        daemon.kill9();
        kills.push((after_ms, done_by_this_process, producing.is_finished()));
        daemon = stand.start(0).await;
    }
    println!("kills (ms after restart, persisted by that process, load finished): {kills:?}");
    assert!(
        kills.iter().all(|k| !k.2),
        "every kill must come while the load is still producing: {kills:?}"
    );
    assert!(
        kills.iter().filter(|k| k.1 > 0.0).count() >= 5,
        "most killed processes must have been doing work: {kills:?}"
    );

    let record = producing.await.unwrap();
    let report = stand
        .audit_until_clean(&record, &audit::Options::default(), DRAIN)
        .await;
    println!("{}", audit::summary(&report));
    assert_eq!(report.check.messages, 4000);
    assert_eq!(report.check.pushed, 4000);
    assert_eq!(report.check.cached, report.check.stored);
    assert!(daemon.sigterm().await.success());
    stand.clean_up().await;
}

/// Two daemons in one consumer group (dynamic membership: real
/// rebalances). One is killed mid-stream; the other takes its partitions
/// after the session timeout; the killed one comes back and the group
/// rebalances again. Both must have done work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_rebalance_around_one_killed_and_restarted() {
    let _turn = TURN.lock().await;
    let mut stand = Stand::on("rebalance", Endpoints::shared(REBALANCE_REDIS_DB), 2).await;
    stand.set(SESSION_TIMEOUT, "6s");
    let a = stand.start(0).await;
    let mut b = stand.start(1).await;
    let producing = load_in_background(&stand, 4000, 80, 43, 120.0, 0.02);

    until_persisted(&b, 200.0).await;
    assert!(
        !producing.is_finished(),
        "the load ended before the kill; nothing was tested"
    );
    b.kill9();
    // The survivor goes on with its own partitions and, after the session
    // timeout, with b's.
    let before = persisted(&a);
    let clock = SystemClock::new();
    clock.sleep(Duration::from_secs(8)).await;
    assert!(
        !producing.is_finished(),
        "the load ended before the restart; nothing was tested"
    );
    let b = stand.start(1).await;
    until_persisted(&b, 1.0).await;
    let record = producing.await.unwrap();
    let report = stand
        .audit_until_clean(&record, &audit::Options::default(), DRAIN)
        .await;
    println!("{}", audit::summary(&report));
    assert_eq!(report.check.messages, 4000);
    assert!(persisted(&a) > before, "the survivor kept working");
    for mut d in [a, b] {
        assert!(d.sigterm().await.success());
    }
    stand.clean_up().await;
}

/// Redis without persistence is killed mid-stream and comes back empty:
/// allocator state, dedup table and cache are gone. Seqs must continue
/// above every seq handed out before (the next block comes from Mongo's
/// `seq` document), and a record delivered again after the loss (producer
/// duplicates; the second transfer loop's join, which redelivers what the
/// first had not committed) must get its first seq back from the dedup
/// ledger in Mongo: nothing is lost or duplicated in Mongo and the push
/// log; the cache is allowed to miss what Redis lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_data_loss_mid_stream_loses_and_duplicates_nothing() {
    let _turn = TURN.lock().await;
    let mut redis = RedisServer::start("redisloss").await;
    let endpoints = Endpoints {
        redis_address: redis.address(),
        redis_db: 0,
        mongo_uri: support::mongodb_uri(),
    };
    let stand = Stand::on("redisloss", endpoints, 1).await;
    let mut daemon = stand.start(0).await;
    let producing = load_in_background(&stand, 3000, 60, 47, 300.0, 0.05);

    until_persisted(&daemon, 300.0).await;
    redis.kill9();
    SystemClock::new().sleep(Duration::from_secs(2)).await;
    redis.restart().await;
    assert!(
        !producing.is_finished(),
        "the load ended before Redis was restarted; nothing was tested"
    );

    let record = producing.await.unwrap();
    let report = stand
        .audit_until_clean(
            &record,
            &audit::Options {
                cache_partial: true,
            },
            DRAIN,
        )
        .await;
    println!("{}", audit::summary(&report));
    assert_eq!(report.check.messages, 3000);
    assert!(
        report.check.cached < report.check.stored,
        "Redis lost the early cache entries"
    );
    assert!(daemon.sigterm().await.success());
    stand.clean_up().await;
}

/// Redis behind Sentinel: a primary, two replicas, one sentinel. The
/// primary is killed mid-stream; the sentinel promotes a replica and points
/// the other at it; the daemon asks the sentinel again and goes on with the
/// new primary. The failover fence (every assignment confirmed by a replica
/// with `WAIT` before its seqs are used) means the promoted replica holds
/// every seq handed out and every cache entry of a used seq: the audit finds
/// nothing lost, duplicated or in conflict, cache included. (With one
/// replica, the fence would stop all writes after the failover until a
/// replica is back: it prefers stopping to handing out a seq twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_mid_stream_loses_and_duplicates_nothing() {
    let _turn = TURN.lock().await;
    let clock = SystemClock::new();
    let mut primary = RedisServer::start("sentinel-primary").await;
    let replica_of = [
        "--replicaof".to_string(),
        "127.0.0.1".into(),
        primary.port.to_string(),
    ];
    let replicas = [
        RedisServer::start_with("sentinel-replica", &replica_of).await,
        RedisServer::start_with("sentinel-replica", &replica_of).await,
    ];
    let sentinel = SentinelServer::start("sentinel", primary.port).await;
    sentinel.until_replicas(2).await;
    for r in &replicas {
        until_replica_linked(r.port).await;
    }

    let mut stand = Stand::on(
        "sentinel",
        Endpoints {
            redis_address: primary.address(),
            redis_db: 0,
            mongo_uri: support::mongodb_uri(),
        },
        1,
    )
    .await;
    stand
        .set(
            "IMENV_REDIS_SENTINELMODE_MASTERNAME",
            SentinelServer::MASTER,
        )
        .set(
            "IMENV_REDIS_SENTINELMODE_SENTINELSADDRS",
            &sentinel.address(),
        )
        .set("IMENV_REDIS_REDISMODE", "sentinel")
        // Nothing of the primary's address is needed: the sentinel names it.
        .set("IMENV_REDIS_ADDRESS", "127.0.0.1:1");
    assert_eq!(stand.cfg.service_config().transfer.cache.wait_replicas, 1);
    let mut daemon = stand.start(0).await;
    let producing = load_in_background(&stand, 3000, 60, 61, 300.0, 0.02);

    until_persisted(&daemon, 300.0).await;
    primary.kill9();
    let killed_at = clock.now_ms();
    let mut promoted = false;
    for _ in 0..300 {
        let now = sentinel.primary_port().await;
        if replicas.iter().any(|r| r.port == now) {
            promoted = true;
            break;
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
    assert!(
        promoted,
        "the sentinel did not promote a replica within 30 s"
    );
    println!(
        "a replica promoted {} ms after the primary was killed",
        clock.now_ms() - killed_at
    );
    assert!(
        !producing.is_finished(),
        "the load ended before the failover; nothing was tested"
    );

    let record = producing.await.unwrap();
    let report = stand
        .audit_until_clean(&record, &audit::Options::default(), DRAIN)
        .await;
    println!("{}", audit::summary(&report));
    assert_eq!(report.check.messages, 3000);
    assert_eq!(report.check.cached, report.check.stored);
    assert!(daemon.sigterm().await.success());
    stand.clean_up().await;
}

/// A real Redis Cluster of three primaries. OpenIM's key names put one
/// conversation's allocator, cache entries and read seqs in different
/// slots (so on different nodes): the assign script keeps to the
/// allocator's slot and the rest is written one routed command per key.
/// The audit reads every node back; every node holds keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_of_three_nodes_carries_the_pipeline() {
    let _turn = TURN.lock().await;
    let cluster = RedisCluster::start("cluster", 3).await;
    let mut stand = Stand::on(
        "cluster",
        Endpoints {
            redis_address: cluster.nodes[0].address(),
            redis_db: 0,
            mongo_uri: support::mongodb_uri(),
        },
        1,
    )
    .await;
    stand
        .set("IMENV_REDIS_ADDRESS", &cluster.addresses())
        .set("IMENV_REDIS_REDISMODE", "cluster");
    assert!(!stand.cfg.service_config().transfer.cache.cache_in_script);
    let mut daemon = stand.start(0).await;
    let record = stand.load(3000, 60, 67, 0.02).await;
    let report = stand
        .audit_until_clean(&record, &audit::Options::default(), DRAIN)
        .await;
    println!("{}", audit::summary(&report));
    assert_eq!(report.check.messages, 3000);
    assert_eq!(report.check.cached, report.check.stored);
    let counts = cluster.key_counts().await;
    println!("keys per node: {counts:?}");
    assert!(counts.iter().all(|n| *n > 100), "{counts:?}");
    assert!(daemon.sigterm().await.success());
    stand.clean_up().await;
}

/// Waits (at most 30 s) until the replica on `port` is in sync with its
/// primary.
async fn until_replica_linked(port: u16) {
    let clock = SystemClock::new();
    let mut conn = support::servers::connect(&format!("127.0.0.1:{port}")).await;
    for _ in 0..300 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("master_link_status:up") {
            return;
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
    panic!("the replica on port {port} did not sync within 30 s");
}

/// FerretDB is killed mid-stream and restarted on the same files: Mongo
/// writes in flight fail or have an unknown outcome, are retried, and the
/// persistence consumer never commits past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferretdb_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    let _turn = TURN.lock().await;
    let mut ferret = FerretServer::start("ferretkill").await;
    let endpoints = Endpoints {
        redis_address: support::redis_address(),
        redis_db: 12,
        mongo_uri: ferret.uri(),
    };
    let stand = Stand::on("ferretkill", endpoints, 1).await;
    let mut daemon = stand.start(0).await;
    let producing = load_in_background(&stand, 3000, 60, 53, 300.0, 0.02);

    until_persisted(&daemon, 300.0).await;
    ferret.restart_after_kill9().await;
    assert!(
        !producing.is_finished(),
        "the load ended before FerretDB was restarted; nothing was tested"
    );

    let record = producing.await.unwrap();
    let report = stand
        .audit_until_clean(&record, &audit::Options::default(), DRAIN)
        .await;
    println!("{}", audit::summary(&report));
    assert_eq!(report.check.messages, 3000);
    assert!(daemon.sigterm().await.success());
    stand.clean_up().await;
}

/// `msgtransfer run` with an invalid value exits at once with status 2
/// (before touching any backend) and names the file, the field and the
/// variable it came from.
#[test]
fn bad_config_is_refused_at_start_with_the_field_named() {
    let cases = [
        (
            "IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_MAXBATCH",
            "0",
            "openim-msgtransfer.yml: rustTransfer.maxBatch",
        ),
        ("IMENV_REDIS_DB", "eight", "redis.yml: db"),
        (
            "IMENV_KAFKA_PRODUCERACK",
            "sometimes",
            "kafka.yml: producerAck",
        ),
    ];
    for (var, value, named) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_msgtransfer"))
            .args(["run", "-c", CONFIG])
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(named), "{var}={value}: {stderr}");
    }
}

/// A record that is not a `MsgDataToMQ` lands in the dead-letter topic with
/// its bytes, key and a reason; the traffic behind it in the same
/// partition is processed and every offset is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_goes_to_the_dead_letter_topic_and_the_rest_is_processed() {
    let _turn = TURN.lock().await;
    use rdkafka::consumer::Consumer as _;
    let stand = Stand::new("dlq", DLQ_REDIS_DB).await;
    let topic = format!("{}.toRedis", stand.run);
    // Truncated protobuf: a length-delimited field 1 longer than the value.
    let garbage: &[u8] = b"\x0a\x7fnot a message";
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();
    for p in 0..4 {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .partition(p)
                    .key("bad-key")
                    .payload(garbage),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let mut daemon = stand.start(0).await;
    let record = stand.load(600, 12, 59, 0.0).await;
    let report = stand
        .audit_until_clean(&record, &audit::Options::default(), DRAIN)
        .await;
    assert_eq!(report.check.messages, 600);

    let dlq = msgtransfer::backends::kafka::read_topic_to_end(
        &msgtransfer::daemon::kafka_settings(&stand.cfg).unwrap(),
        &format!("{}.dlq", stand.run),
        |_| {},
    )
    .await
    .unwrap();
    let dead: Vec<_> = dlq.values().flatten().collect();
    assert_eq!(dead.len(), 4, "one per partition");
    for r in &dead {
        assert_eq!(r.value.as_ref(), garbage);
        assert_eq!(r.key.as_ref(), b"bad-key");
        let reason = r
            .headers
            .iter()
            .find(|(k, _)| k == msgtransfer::pipeline::consumer::dlq_header::REASON)
            .map(|(_, v)| String::from_utf8_lossy(v).to_string())
            .expect("a reason header");
        assert!(!reason.is_empty());
    }

    // Everything, the bad records included, is committed: after a
    // SIGTERM the group's offsets are at the end of every partition.
    assert!(daemon.sigterm().await.success());
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("group.id", format!("{}.redis", stand.run))
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for e in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks(&topic, e.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            e.offset(),
            rdkafka::Offset::Offset(high),
            "partition {}",
            e.partition()
        );
    }
    stand.clean_up().await;
}

/// The operator's path through `msgtransfer dlq`, as the binary on a real
/// broker: a record over `maxContentBytes` is refused whole while the
/// records around it are stored; `dlq list` shows it with its reason;
/// `dlq replay` refuses a selection it cannot honour; once the limit is
/// raised, replaying the record twice stores it once, at the next seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_commands_list_and_replay_a_refused_record_on_real_kafka() {
    use mongodb::bson::{Document, doc};
    use msgtransfer::domain::context::MsgContext;
    use msgtransfer::ports::{LogProducer, OutRecord};
    use msgtransfer::proto::MsgData;
    use prost::Message;

    let _turn = TURN.lock().await;
    const CONTENT_LIMIT: &str = "IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_MAXCONTENTBYTES";
    let mut stand = Stand::new("dlqcli", DLQ_CLI_REDIS_DB).await;
    stand.set(CONTENT_LIMIT, "200");
    let run = stand.run.clone();
    let text = |id: &str, content: String| MsgData {
        send_id: "alice".into(),
        recv_id: "bob".into(),
        client_msg_id: id.into(),
        session_type: 1,
        msg_from: 100,
        content_type: 101,
        content: content.into_bytes(),
        status: 1,
        ..Default::default()
    };
    let big = text("m-big", format!("{{\"content\":\"{}\"}}", "x".repeat(1000)));
    let producer = msgtransfer::backends::kafka::KafkaProducer::new(
        &msgtransfer::daemon::kafka_settings(&stand.cfg).unwrap(),
    )
    .unwrap();
    let to_redis: std::sync::Arc<str> = format!("{run}.toRedis").into();
    for (i, m) in [
        text("m1", "{\"content\":\"hi\"}".into()),
        big.clone(),
        text("m2", "{\"content\":\"yo\"}".into()),
    ]
    .iter()
    .enumerate()
    {
        let ctx = MsgContext {
            operation_id: format!("op-{i}"),
            op_user_id: "alice".into(),
            platform: "2".into(),
            conn_id: String::new(),
        };
        producer
            .send(OutRecord {
                topic: to_redis.clone(),
                key: "alice_bob".into(),
                value: m.encode_to_vec().into(),
                headers: ctx.to_headers().into(),
            })
            .await
            .unwrap();
    }

    let cli = |stand: &Stand, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_msgtransfer"))
            .arg("dlq")
            .args(args)
            .args(["-c", CONFIG])
            .envs(&stand.env)
            .output()
            .expect("running msgtransfer dlq");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let clock = SystemClock::new();
    let msg = stand.db.collection::<Document>("msg");
    // The client message IDs in the bucket's slots, in slot order.
    let slots = || async {
        let Some(b) = msg
            .find_one(doc! {"doc_id": "si_alice_bob:0"})
            .await
            .unwrap()
        else {
            return Vec::new();
        };
        b.get_array("msgs")
            .unwrap()
            .iter()
            .map_while(|s| {
                let m = s.as_document()?.get_document("msg").ok()?;
                Some(m.get_str("client_msg_id").ok()?.to_string())
            })
            .collect::<Vec<_>>()
    };
    let wait_for = |want: Vec<&'static str>| {
        let slots = &slots;
        let clock = &clock;
        async move {
            for _ in 0..480 {
                if slots().await == want {
                    return;
                }
                clock.sleep(Duration::from_millis(250)).await;
            }
            panic!("slots are {:?}, want {want:?}", slots().await);
        }
    };

    // The big one is refused; the records around it are stored.
    let mut daemon = stand.start(0).await;
    wait_for(vec!["m1", "m2"]).await;
    let listed = {
        let mut listed = String::new();
        for _ in 0..240 {
            let (code, out, err) = cli(&stand, &["list", "--json"]);
            assert_eq!(code, Some(0), "{err}");
            if !out.is_empty() {
                listed = out;
                break;
            }
            clock.sleep(Duration::from_millis(250)).await;
        }
        listed
    };
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{listed}");
    let letter = &lines[0];
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("m-big") && reason.contains("maxContentBytes"),
        "{reason}"
    );
    assert_eq!(letter["source_topic"], to_redis.as_ref());
    assert_eq!(letter["source_offset"], 1);
    assert_eq!(letter["key"], "alice_bob");
    assert_eq!(letter["value_bytes"], big.encoded_len());
    let at = format!("{}:{}", letter["partition"], letter["offset"]);
    // The human listing says the same, one line per record.
    let (code, out, err) = cli(&stand, &["list", "--reason", "maxContentBytes"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("{at}  from {to_redis}")), "{out}");
    assert!(err.contains("1 record(s)"), "{err}");

    // Replay refuses a selection it cannot honour, and produces nothing.
    let (code, _, err) = cli(&stand, &["replay"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = cli(&stand, &["replay", "--at", "0:999999"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nothing replayed"), "{err}");
    let (code, out, err) = cli(&stand, &["replay", "--at", &at, "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("maxContentBytes") && err.contains("dry run"),
        "{err}"
    );

    // The operator raises the limit, restarts, and replays it twice.
    assert!(daemon.sigterm().await.success());
    stand.set(CONTENT_LIMIT, "1000000");
    let mut daemon = stand.start(0).await;
    for _ in 0..2 {
        let (code, _, err) = cli(&stand, &["replay", "--at", &at]);
        assert_eq!(code, Some(0), "{err}");
        assert!(err.contains("replayed 1 record(s)"), "{err}");
    }
    wait_for(vec!["m1", "m2", "m-big"]).await;
    // SIGTERM drains: both replays are processed and committed.
    assert!(daemon.sigterm().await.success());
    assert_eq!(slots().await, vec!["m1", "m2", "m-big"], "stored once");
    let settings = msgtransfer::daemon::kafka_settings(&stand.cfg).unwrap();
    let read = |topic: String| {
        let settings = settings.clone();
        async move {
            msgtransfer::backends::kafka::read_topic_to_end(&settings, &topic, |_| {})
                .await
                .unwrap()
                .into_values()
                .flatten()
                .collect::<Vec<_>>()
        }
    };
    let inputs = read(to_redis.to_string()).await;
    assert_eq!(inputs.len(), 5, "three sent, two replayed");
    let pushed: Vec<(String, i64)> = read(format!("{run}.toPush"))
        .await
        .iter()
        .map(|r| {
            let m = msgtransfer::embedded::history::pushed(&r.value).expect("a toPush record");
            (m.client_msg_id, m.seq)
        })
        .collect();
    assert!(pushed.iter().all(|(id, _)| !id.is_empty()), "{pushed:?}");
    let big_seqs: Vec<i64> = pushed
        .iter()
        .filter(|(id, _)| id == "m-big")
        .map(|(_, s)| *s)
        .collect();
    assert!(
        !big_seqs.is_empty() && big_seqs.iter().all(|s| *s == 3),
        "{pushed:?}"
    );
    let (_, out, _) = cli(&stand, &["list", "--json"]);
    assert_eq!(out.lines().count(), 1, "nothing new was refused: {out}");
    stand.clean_up().await;
}
