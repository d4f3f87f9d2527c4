//! `msgtransfer run`: the production daemon on real Kafka, Redis and
//! MongoDB, configured from OpenIM's config folder.
//!
//! Start-up order (every failure aborts with the backend named): load and
//! validate the configuration, connect MongoDB and create the indexes,
//! connect Redis, create the Kafka producer, join the `toRedis` group with
//! `transferLoops` members and the `toMongo` group with one, then run the
//! service until SIGTERM or SIGINT. A signal stops consuming; running
//! batches finish (bounded by `drainTimeout`), finished offsets are
//! committed, and the process exits 0.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::backends::kafka::{KafkaConsumer, KafkaProducer, KafkaSettings, KafkaTlsFiles};
use crate::backends::mongo::MongoStore;
use crate::backends::redis::{ClusterConn, RedisConn, SentinelConn};
use crate::config::{self, Config, RedisMode};
use crate::metrics::{LATENCY_BOUNDS_MS, Metrics};
use crate::ports::hook::{ConversationHook, HookError, NewConversation};
use crate::ports::{BoxFuture, LogConsumer, SeededRng};
use crate::service::{self, Wiring};

/// Announces new conversations in the log.
///
/// OpenIM's MsgTransfer calls the conversation RPC here; this build has no
/// client for it yet, so the daemon records each first message of a chat
/// at info level (conversation ID, session type, sender, receiver or
/// group), which is what an operator needs to create the rows by hand.
struct LoggedConversations;

impl ConversationHook for LoggedConversations {
    fn created(&self, conv: NewConversation) -> BoxFuture<'_, Result<(), HookError>> {
        tracing::info!(
            conversation_id = %conv.conversation_id,
            session_type = conv.session_type,
            send_id = %conv.send_id,
            recv_id = %conv.recv_id,
            group_id = %conv.group_id,
            operation_id = %conv.operation_id,
            "new conversation"
        );
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The Prometheus name of a counter: OpenIM's own names (already ending in
/// `_total`) as they are, ours under a `msgtransfer_` prefix.
pub fn prometheus_name(counter: &str) -> String {
    if counter.ends_with("_total") {
        counter.to_string()
    } else {
        format!("msgtransfer_{counter}_total")
    }
}

/// Consumer lag gauges, one per consumer, labelled with its topic.
pub type Lags = Vec<(String, Arc<AtomicI64>)>;

/// The metrics in Prometheus' text exposition format: the counters, the
/// end-to-end latency histogram (`msgtransfer_e2e_latency_seconds`) and
/// the consumer lag per input topic (`msgtransfer_consumer_lag`).
pub fn render_metrics(metrics: &Metrics, lags: &Lags) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, value) in metrics.snapshot() {
        let name = prometheus_name(name);
        let _ = write!(out, "# TYPE {name} counter\n{name} {value}\n");
    }
    let h = metrics.e2e_latency.snapshot();
    let name = "msgtransfer_e2e_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From a message's sendTime to its Mongo write."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, c) in h.counts.iter().enumerate() {
        cumulative += c;
        let le = LATENCY_BOUNDS_MS
            .get(i)
            .map_or("+Inf".to_string(), |ms| format!("{}", *ms as f64 / 1000.0));
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", h.sum_ms as f64 / 1000.0);
    let _ = writeln!(out, "{name}_count {cumulative}");
    let mut per_topic: BTreeMap<&str, i64> = BTreeMap::new();
    for (topic, lag) in lags {
        *per_topic.entry(topic).or_default() += lag.load(Ordering::Relaxed);
    }
    let _ = writeln!(out, "# TYPE msgtransfer_consumer_lag gauge");
    for (topic, lag) in per_topic {
        let _ = writeln!(out, "msgtransfer_consumer_lag{{topic=\"{topic}\"}} {lag}");
    }
    out
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz` (the
/// service is running and not draining) over plain HTTP/1.1, one request
/// per connection.
async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    lags: Lags,
    ready: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let lags = lags.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", render_metrics(&metrics, &lags)),
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" if *ready.borrow() => ("200 OK", "ready\n".to_string()),
                "/readyz" => ("503 Service Unavailable", "not ready\n".to_string()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Loads `dir` for instance `index` with the process environment.
pub fn load_config(dir: &Path, index: usize) -> anyhow::Result<Config> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    config::load(dir, index, &env).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

/// The Kafka client settings `cfg` describes. TLS files named in
/// `kafka.yml` must be readable now: a missing one is refused at start-up
/// with its field named, not found later by a client that keeps retrying.
pub fn kafka_settings(cfg: &Config) -> anyhow::Result<KafkaSettings> {
    let k = &cfg.kafka;
    let tls = if k.tls.enabled {
        let readable = |field: &str, path: &Option<String>| -> anyhow::Result<Option<String>> {
            if let Some(p) = path {
                std::fs::File::open(p)
                    .map_err(|e| anyhow::anyhow!("kafka.yml: tls.{field}: cannot read {p}: {e}"))?;
            }
            Ok(path.clone())
        };
        Some(KafkaTlsFiles {
            ca: readable("caCrt", &k.tls.ca_crt)?,
            cert: readable("clientCrt", &k.tls.client_crt)?,
            key: readable("clientKey", &k.tls.client_key)?,
            key_password: k.tls.client_key_pwd.clone(),
            insecure_skip_verify: k.tls.insecure_skip_verify,
        })
    } else {
        None
    };
    let (username, password) = match k.sasl_plain() {
        Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
        None => (None, None),
    };
    Ok(KafkaSettings {
        brokers: k.addresses.clone(),
        username,
        password,
        compression: k.compression.as_str().to_string(),
        max_message_bytes: cfg.tuning.producer_max_record_bytes,
        session_timeout: cfg.tuning.session_timeout,
        tls,
        ..KafkaSettings::default()
    })
}

/// Connects to Redis as `redis.yml` says: the one server, or the primary
/// that the sentinels name. Cluster mode is refused with the field named.
pub async fn connect_redis(cfg: &Config) -> anyhow::Result<RedisConn> {
    let r = &cfg.redis;
    let mut redis_info = redis::RedisConnectionInfo::default().set_db(i64::from(r.db));
    if !r.username.is_empty() {
        redis_info = redis_info.set_username(r.username.clone());
    }
    if !r.password.is_empty() {
        redis_info = redis_info.set_password(r.password.clone());
    }
    // A WAIT (the failover fence) may take its whole timeout; the reply
    // must be allowed that long and a little more.
    let cache = cfg.service_config().transfer.cache;
    let response_timeout = if cache.wait_replicas > 0 {
        Duration::from_millis(cache.wait_timeout_ms) + Duration::from_secs(1)
    } else {
        Duration::from_millis(500)
    };
    let mut conn = match &r.mode {
        RedisMode::Cluster => {
            if cache.wait_replicas > 0 {
                anyhow::bail!(
                    "openim-msgtransfer.yml: rustTransfer.redisWaitReplicas: WAIT is not \
                     supported with redisMode cluster; set it to 0"
                );
            }
            RedisConn::Cluster(
                ClusterConn::connect(&r.addresses, redis_info, response_timeout)
                    .await
                    .with_context(|| {
                        format!("redis.yml: address: no Redis Cluster at {:?}", r.addresses)
                    })?,
            )
        }
        RedisMode::Sentinel(s) => RedisConn::Sentinel(
            SentinelConn::connect(&s.addresses, &s.master_name, redis_info, response_timeout)
                .await
                .with_context(|| {
                    format!(
                        "redis.yml: sentinelMode: no primary {:?} from the sentinels {:?}",
                        s.master_name, s.addresses
                    )
                })?,
        ),
        RedisMode::Standalone => {
            let addr = r
                .addresses
                .first()
                .context("redis.yml: address: no Redis address")?;
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .with_context(|| format!("redis.yml: address: {addr:?} is not host:port"))?;
            let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
                host, port,
            ))
            .context("redis address")?
            .set_redis_settings(redis_info);
            let client = redis::Client::open(info).context("redis client")?;
            RedisConn::Standalone(
                redis::aio::ConnectionManager::new_with_config(
                    client,
                    redis::aio::ConnectionManagerConfig::new()
                        .set_response_timeout(Some(response_timeout)),
                )
                .await
                .with_context(|| format!("connecting to Redis at {addr}"))?,
            )
        }
    };
    redis::cmd("PING")
        .query_async::<()>(&mut conn)
        .await
        .context("PING to Redis")?;
    Ok(conn)
}

/// Runs the daemon until a signal, then drains.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let service_cfg = cfg.service_config();
    tracing::info!(
        config = %cfg.dir.display(),
        index = cfg.index,
        brokers = ?cfg.kafka.addresses,
        to_redis = %cfg.kafka.to_redis_topic,
        "msgtransfer starting"
    );

    let store = MongoStore::connect(&cfg.mongo.uri, &cfg.mongo.database)
        .await
        .map_err(|e| anyhow::anyhow!("mongodb.yml: connecting to MongoDB: {e}"))?
        .with_ledger_window(service_cfg.transfer.cache.dedup_window_ms);
    crate::ports::DocStore::ensure_indexes(&store)
        .await
        .map_err(|e| anyhow::anyhow!("MongoDB indexes: {e}"))?;
    let redis = connect_redis(&cfg).await?;
    let kafka = kafka_settings(&cfg)?;
    let producer = KafkaProducer::new(&kafka).map_err(|e| anyhow::anyhow!("{e}"))?;
    {
        let t = &service_cfg.transfer.topics;
        producer
            .warm(&[t.to_push.clone(), t.to_mongo.clone(), t.dlq.clone()])
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "kafka.yml: topics {}, {}, {}: {e}",
                    t.to_push,
                    t.to_mongo,
                    t.dlq
                )
            })?;
    }

    let topics = &service_cfg.transfer.topics;
    let mut lags: Lags = Vec::new();
    let mut transfer_in: Vec<Box<dyn LogConsumer>> = Vec::new();
    let instance = |what: String| {
        cfg.tuning
            .static_membership
            .then(|| format!("msgtransfer-{}-{what}", cfg.index))
    };
    for i in 0..cfg.tuning.transfer_loops.max(1) {
        let c = KafkaConsumer::member(
            &kafka,
            &service_cfg.groups.to_redis,
            &topics.to_redis,
            instance(format!("t{i}")).as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        lags.push((topics.to_redis.to_string(), c.lag()));
        transfer_in.push(Box::new(c));
    }
    let persist = KafkaConsumer::member(
        &kafka,
        &service_cfg.groups.to_mongo,
        &topics.to_mongo,
        instance("p".into()).as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    lags.push((topics.to_mongo.to_string(), persist.lag()));
    let persist_in: Box<dyn LogConsumer> = Box::new(persist);

    // Lock tokens and backoff jitter only need to differ between
    // processes, not to be secret: seed from the process id and start time.
    #[allow(clippy::disallowed_methods)]
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    let metrics = Arc::new(Metrics::default());
    let wiring = Wiring {
        redis,
        store: Arc::new(store),
        producer: Arc::new(producer.clone()),
        hook: Arc::new(LoggedConversations),
        clock: Arc::new(crate::ports::clock::SystemClock::new()),
        rng: Arc::new(SeededRng::new(seed)),
        metrics: metrics.clone(),
    };

    let (ready_tx, ready_rx) = watch::channel(false);
    if let Some(port) = cfg.prometheus_port {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("openim-msgtransfer.yml: prometheus.ports: port {port}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics on /metrics, /healthz, /readyz");
        tokio::spawn(serve_http(listener, metrics.clone(), lags, ready_rx));
    }

    let (tx, rx) = watch::channel(false);
    let mut svc = tokio::spawn({
        let cfg = service_cfg.clone();
        async move { service::run(wiring, transfer_in, persist_in, &cfg, rx).await }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let _ = ready_tx.send(true);
    tokio::select! {
        r = &mut svc => {
            r.context("service task")??;
            anyhow::bail!("the service stopped on its own");
        }
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    let _ = ready_tx.send(false);
    let _ = tx.send(true);
    // The loops give running batches `drainTimeout`, then commit and close
    // their consumers; a backend that does not answer must not hold the
    // exit longer than that plus a little. Whatever is not committed by
    // then is delivered again (and deduplicated) after the restart.
    let clock = crate::ports::clock::SystemClock::new();
    let budget = cfg.tuning.drain_timeout + Duration::from_secs(2);
    tokio::select! {
        r = &mut svc => r.context("service task")??,
        _ = crate::ports::Clock::sleep(&clock, budget) => {
            tracing::warn!(
                budget_ms = budget.as_millis() as u64,
                "shutdown did not finish in time (a backend is not answering); exiting without \
                 the last commit: uncommitted records will be delivered again"
            );
            svc.abort();
            return Ok(());
        }
    }
    if let Err(e) = producer.flush(Duration::from_secs(1)) {
        tracing::warn!(error = %e, "flushing the producer at exit failed; unacknowledged records stay uncommitted and will be delivered again");
    }
    tracing::info!(
        records_in = Metrics::get(&metrics.records_in),
        persisted = Metrics::get(&metrics.msgs_persisted),
        "msgtransfer stopped"
    );
    Ok(())
}
