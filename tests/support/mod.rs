//! Endpoints of the real backends for the integration suites.
//!
//! Each comes from the environment (`REDIS_URL`, `KAFKA_BROKERS`,
//! `MONGODB_URI`, as `ci/backends.sh env` prints them). When one is missing
//! and a Docker engine answers, a container serves it instead
//! ([`containers`]). When neither, the test fails and says how to start the
//! backends: an integration test that cannot reach its backend must never
//! pass silently.

#![allow(dead_code)]

pub mod containers;
pub mod daemon;
pub mod servers;

use std::sync::atomic::{AtomicU64, Ordering};

const HOW: &str = "start the local backends with `ci/backends.sh up` and then \
                   `eval \"$(ci/backends.sh env)\"` (or run `ci/test.sh`, which does both)";

fn endpoint(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => containers::endpoint(var).unwrap_or_else(|why| {
            panic!(
                "{var} is not set and no container could serve it ({why}): this suite \
                 needs a real backend; {HOW}, or make a Docker engine reachable"
            )
        }),
    }
}

/// The real Redis, e.g. `redis://127.0.0.1:6379/`.
pub fn redis_url() -> String {
    endpoint("REDIS_URL")
}

/// The Redis server's `host:port` (from `REDIS_URL`).
pub fn redis_address() -> String {
    let url = redis_url();
    let rest = url.strip_prefix("redis://").unwrap_or(&url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// A connection to database `db` of the real Redis, emptied first: for a
/// test that owns that database (its keys are fixed by a seed).
pub async fn redis_db_flushed(db: u32) -> redis::aio::MultiplexedConnection {
    redis_flushed_at(&redis_address(), db).await
}

/// A connection to database `db` of the Redis server at `address`
/// (`host:port`), emptied first.
pub async fn redis_flushed_at(address: &str, db: u32) -> redis::aio::MultiplexedConnection {
    let url = format!("redis://{address}/{db}");
    let mut conn = redis::Client::open(url.as_str())
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {url}: {e}; {HOW}"));
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    conn
}

/// A prefix no other test (in this run or an earlier one against the same
/// server) uses, so tests can share one server without flushing it.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Process id and a per-process counter identify this test in this run;
    // the time of day keeps runs apart on a long-lived server. (Tests may
    // read the wall clock: they are not the deterministic core.)
    #[allow(clippy::disallowed_methods)]
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{tag}{:x}x{:x}x{}",
        std::process::id(),
        nanos & 0xffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A multiplexed connection to the real Redis.
pub async fn redis_conn() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str())
        .unwrap_or_else(|e| panic!("REDIS_URL={url} is not a Redis URL: {e}"));
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {url}: {e}; {HOW}"))
}

/// The real MongoDB (or FerretDB), e.g. `mongodb://127.0.0.1:27017/`.
pub fn mongodb_uri() -> String {
    endpoint("MONGODB_URI")
}

/// A database of its own for one test, on the real MongoDB.
pub async fn mongo_db(tag: &str) -> mongodb::Database {
    let uri = mongodb_uri();
    let client = mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap_or_else(|e| panic!("MONGODB_URI={uri} is not usable: {e}"));
    let db = client.database(&unique(tag));
    db.run_command(mongodb::bson::doc! {"ping": 1})
        .await
        .unwrap_or_else(|e| panic!("cannot reach MongoDB at {uri}: {e}; {HOW}"));
    db
}

/// The real Kafka brokers, e.g. `127.0.0.1:9092`.
pub fn kafka_brokers() -> String {
    endpoint("KAFKA_BROKERS")
}

/// The real Kafka's TLS listener (mutual TLS) and the client's files, from
/// `KAFKA_TLS_BROKERS`, `KAFKA_TLS_DIR` (`ca.pem`, `client.pem`, and
/// `client.key` encrypted with `KAFKA_TLS_KEY_PASSWORD`), as
/// `ci/backends.sh env` prints them. No container serves this one.
pub fn kafka_tls() -> (String, msgtransfer::backends::kafka::KafkaTlsFiles) {
    let var = |name: &str| match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{name} is not set: the TLS test needs the TLS listener of ci/backends.sh; {HOW}"
        ),
    };
    let dir = std::path::PathBuf::from(var("KAFKA_TLS_DIR"));
    let file = |name: &str| Some(dir.join(name).display().to_string());
    let files = msgtransfer::backends::kafka::KafkaTlsFiles {
        ca: file("ca.pem"),
        cert: file("client.pem"),
        key: file("client.key"),
        key_password: Some(var("KAFKA_TLS_KEY_PASSWORD")),
        insecure_skip_verify: false,
    };
    (var("KAFKA_TLS_BROKERS"), files)
}

/// Creates `topic` with `partitions` partitions on the real Kafka.
pub async fn kafka_topic(topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let brokers = kafka_brokers();
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap_or_else(|e| panic!("KAFKA_BROKERS={brokers}: {e}"));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(20))),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot reach Kafka at {brokers}: {e}; {HOW}"));
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}
