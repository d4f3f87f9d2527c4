//! The daemon's configuration: OpenIM's own configuration folder, read with
//! OpenIM's field names, so `msgtransfer run -c <folder> [-i <index>]` runs
//! on the folder an OpenIM deployment already has.
//!
//! # Files
//! [`load`] reads, from the folder, `openim-msgtransfer.yml`, `kafka.yml`,
//! `redis.yml`, `mongodb.yml`, `share.yml`, `webhooks.yml` and `log.yml`
//! (v3.8-era field lists; `discovery.yml` and every other file may be there
//! and are not read). Each must exist. Our own tuning knobs live in the
//! `rustTransfer:` section of `openim-msgtransfer.yml`; OpenIM's Go service
//! ignores keys it does not know, so one folder serves both. Every knob is
//! optional; [`Tuning::default`] holds the defaults.
//!
//! # Environment
//! As with OpenIM's viper setup, a variable named `IMENV_` + the file name
//! (without `.yml`, upper-cased, `-` and `.` as `_`) + `_` + the field path
//! (upper-cased, joined by `_`) overrides that field: `IMENV_KAFKA_ADDRESS`,
//! `IMENV_REDIS_PASSWORD`, `IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_ENABLE`,
//! `IMENV_KAFKA_TLS_ENABLETLS`. Text fields take the value as it is; list
//! fields take comma-separated items (or `[a, b]`); other fields read the
//! value as a YAML scalar, so `true`, `8` and `5s` get their types. The
//! variables are laid over the parsed files before anything is checked, so
//! they meet the same rules as the files. A variable with the prefix of one
//! of these files that names none of its fields is an error (a typo would
//! otherwise be silently ignored); variables of other files (`IMENV_DISCOVERY_…`,
//! `IMENV_OPENIM_API_…`) are left alone.
//!
//! # Errors
//! Unknown fields, values of the wrong type and values this service cannot
//! run with are refused. Every [`ConfigError`] names the file and, where
//! there is one, the field path, as `file: field: message`:
//! `kafka.yml: producerAck: expected one of no_response, wait_for_local,
//! wait_for_all, got "all"`, `mongodb.yml: unknown field "uris" (did you
//! mean "uri"?)`.

mod duration;
mod schema;
mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use duration::parse_duration;

use crate::cache::CacheConfig;
use crate::domain::limits::Limits;
use crate::pipeline::consumer::ConsumerConfig;
use crate::pipeline::retry::Backoff;
use crate::pipeline::transfer::{Topics, TransferConfig};
use crate::service::{Groups, ServiceConfig};
use tree::View;

/// Why the configuration could not be loaded: the file, the field path
/// (`sentinelMode.masterName`, `prometheus.ports[2]`) when the problem is a
/// field's, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file's name in the folder, such as `kafka.yml`.
    pub file: String,
    /// The field's path inside the file, if the problem is one field's.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn file(file: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}: {}", self.file, field, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Everything the daemon needs, typed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The folder the files came from.
    pub dir: PathBuf,
    /// This instance's index (`-i`), which picks its Prometheus port.
    pub index: usize,
    /// `kafka.yml`.
    pub kafka: KafkaConfig,
    /// `redis.yml`.
    pub redis: RedisConfig,
    /// `mongodb.yml`.
    pub mongo: MongoConfig,
    /// Where this instance serves `/metrics`: `None` when
    /// `prometheus.enable` is false, else `prometheus.ports[index]`, or 0
    /// (any free port, as OpenIM does) when `autoSetPorts` is on and no
    /// ports are listed.
    pub prometheus_port: Option<u16>,
    /// `webhooks.yml`: the one webhook MsgTransfer calls.
    pub webhooks: WebhooksConfig,
    /// `log.yml`, and `rustTransfer.logFormat`.
    pub log: LogConfig,
    /// The `rustTransfer:` section of `openim-msgtransfer.yml`.
    pub tuning: Tuning,
}

/// `kafka.yml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `address`: bootstrap brokers, `host:port`; never empty.
    pub addresses: Vec<String>,
    /// `username` for SASL/PLAIN (see [`KafkaConfig::sasl_plain`]).
    pub username: String,
    /// `password` for SASL/PLAIN.
    pub password: String,
    /// `producerAck`.
    pub producer_ack: ProducerAck,
    /// `compressType`.
    pub compression: Compression,
    /// `toRedisTopic` (default `toRedis`): the transfer stage's input.
    pub to_redis_topic: String,
    /// `toMongoTopic` (default `toMongo`): persistence records.
    pub to_mongo_topic: String,
    /// `toPushTopic` (default `toPush`): push records.
    pub to_push_topic: String,
    /// `toOfflinePushTopic` (default `toOfflinePush`; not used here).
    pub to_offline_push_topic: String,
    /// `toRedisGroupID` (default `redis`).
    pub to_redis_group_id: String,
    /// `toMongoGroupID` (default `mongo`).
    pub to_mongo_group_id: String,
    /// `toPushGroupID` (default `push`; openim-push's group, not used here).
    pub to_push_group_id: String,
    /// `toOfflinePushGroupID` (default `offlinePush`; not used here).
    pub to_offline_push_group_id: String,
    /// `tls`.
    pub tls: KafkaTls,
}

impl KafkaConfig {
    /// The SASL/PLAIN credentials, when `username` or `password` is set
    /// (OpenIM turns SASL on when either is).
    pub fn sasl_plain(&self) -> Option<(&str, &str)> {
        (!self.username.is_empty() || !self.password.is_empty())
            .then_some((self.username.as_str(), self.password.as_str()))
    }
}

/// `producerAck`: what a produce waits for. Empty means wait-for-all, as in
/// OpenIM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerAck {
    /// `no_response`: acks=0.
    NoResponse,
    /// `wait_for_local`: acks=1, the leader only.
    WaitForLocal,
    /// `wait_for_all`: acks=all, every in-sync replica.
    WaitForAll,
}

impl ProducerAck {
    /// The Kafka `acks` setting: `"0"`, `"1"` or `"all"`.
    pub fn acks(self) -> &'static str {
        match self {
            ProducerAck::NoResponse => "0",
            ProducerAck::WaitForLocal => "1",
            ProducerAck::WaitForAll => "all",
        }
    }
}

/// `compressType`: the producer's compression codec. Empty means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `none`.
    None,
    /// `gzip`.
    Gzip,
    /// `snappy`.
    Snappy,
    /// `lz4`.
    Lz4,
    /// `zstd`.
    Zstd,
}

impl Compression {
    /// The codec's name as Kafka clients spell it (`compression.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `kafka.yml` `tls`. Paths are as written (relative ones are relative to
/// the daemon's working directory, as in OpenIM).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaTls {
    /// `enableTLS`. When false the other settings are not used.
    pub enabled: bool,
    /// `caCrt`: CA certificate file.
    pub ca_crt: Option<String>,
    /// `clientCrt`: client certificate file (set together with `clientKey`).
    pub client_crt: Option<String>,
    /// `clientKey`: client key file.
    pub client_key: Option<String>,
    /// `clientKeyPwd`: the client key's password.
    pub client_key_pwd: Option<String>,
    /// `insecureSkipVerify`: accept any broker certificate.
    pub insecure_skip_verify: bool,
}

/// `redis.yml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `address`: `host:port` of the server (standalone: the first one) or
    /// of cluster nodes; never empty except in sentinel mode.
    pub addresses: Vec<String>,
    /// `username` (ACL user); empty for none.
    pub username: String,
    /// `password`; empty for none.
    pub password: String,
    /// `redisMode` (older files: `clusterMode: true` means cluster).
    pub mode: RedisMode,
    /// `db` (ignored by Redis Cluster).
    pub db: u32,
    /// `maxRetry` (default 10).
    pub max_retry: u32,
    /// `poolSize`; 0 means the client's default.
    pub pool_size: u32,
}

/// How to reach Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// One server.
    Standalone,
    /// Redis Cluster.
    Cluster,
    /// A primary found through Sentinel.
    Sentinel(SentinelConfig),
}

/// `redis.yml` `sentinelMode`, required in sentinel mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `masterName`: the monitored primary's name; never empty.
    pub master_name: String,
    /// `sentinelsAddrs`: `host:port` of the sentinels; never empty.
    pub addresses: Vec<String>,
    /// `routeByLatency`: read from the closest node.
    pub route_by_latency: bool,
    /// `routeRandomly`: read from a random node.
    pub route_randomly: bool,
}

/// `mongodb.yml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MongoConfig {
    /// The connection string: `uri` when set, else built from `address`,
    /// `username`, `password`, `authSource` and `maxPoolSize` as OpenIM
    /// builds it (`mongodb://user:pass@h1,h2/<database>?authSource=…&maxPoolSize=…`;
    /// credentials only when both are set, percent-encoded here).
    pub uri: String,
    /// `database`; never empty.
    pub database: String,
    /// `maxPoolSize` (0 or absent: 100).
    pub max_pool_size: u32,
    /// `maxRetry` (0 or absent: 3).
    pub max_retry: u32,
}

/// `webhooks.yml`, as far as MsgTransfer uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// `url`: the base URL; commands are appended as `/<command>`.
    pub url: String,
    /// `afterMsgSaveDB`: called after messages are stored in Mongo.
    pub after_msg_save_db: AfterHook,
}

/// One "after" webhook's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfterHook {
    /// `enable` (default false). When true, `url` must be an http(s) URL.
    pub enable: bool,
    /// `timeout`, seconds in the file (absent or 0: 5 s).
    pub timeout: Duration,
    /// `attentionIds`: only messages from or to these users, when not empty.
    pub attention_ids: Vec<String>,
    /// `allowedTypes`: only these content types, when not empty.
    pub allowed_types: Vec<RangeInclusive<i32>>,
    /// `deniedTypes`: never these content types.
    pub denied_types: Vec<RangeInclusive<i32>>,
}

/// `log.yml`, and the output format from `rustTransfer.logFormat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `storageLocation`: the folder for log files.
    pub storage_location: String,
    /// `rotationTime`: hours per log file (default 24).
    pub rotation_time_hours: u32,
    /// `remainRotationCount`: rotated files kept (default 2).
    pub remain_rotation_count: u32,
    /// `remainLogLevel`, 0–6: 6 and 5 debug, 4 info, 3 warn, 2 error, 1
    /// fatal, 0 panic (default 6).
    pub remain_log_level: u8,
    /// `isStdout`: log to standard output too.
    pub is_stdout: bool,
    /// `isJson`: OpenIM's JSON switch; the default of [`LogConfig::format`].
    pub is_json: bool,
    /// `withStack`: attach stacks to errors.
    pub with_stack: bool,
    /// `rustTransfer.logFormat` (`text` or `json`); when absent, json if
    /// `isJson` is on, else text.
    pub format: LogFormat,
}

impl LogConfig {
    /// The `tracing` level matching `remainLogLevel`: `"debug"`, `"info"`,
    /// `"warn"` or `"error"` (OpenIM's fatal and panic levels log errors).
    pub fn level(&self) -> &'static str {
        match self.remain_log_level {
            5.. => "debug",
            4 => "info",
            3 => "warn",
            _ => "error",
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Our tuning knobs: the `rustTransfer:` section of
/// `openim-msgtransfer.yml`. Every one is optional; the defaults are the
/// service's current ones ([`ServiceConfig::default`]), except
/// `drain_timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// `transferLoops`: `toRedis` consumer-group members per process (1–256;
    /// default 2).
    pub transfer_loops: usize,
    /// `linger`: how long a small conversation batch waits for more items
    /// (default 2ms).
    pub linger: Duration,
    /// `maxBatch`: items of one conversation per transfer batch (default 500).
    pub max_batch: usize,
    /// `persistMaxBatch`: items of one conversation per persistence batch
    /// (default 1000).
    pub persist_max_batch: usize,
    /// `persistLinger`: how long a small persistence batch waits for more
    /// messages of its conversation (default 2ms). Longer means fewer,
    /// fuller bucket writes, for a store where each write is costly.
    pub persist_linger: Duration,
    /// `maxQueuedRecords`: items consumed but not done before a loop stops
    /// polling (default 200000).
    pub max_queued_records: usize,
    /// `commitInterval`: how often finished offsets are committed (default
    /// 200ms; more than zero).
    pub commit_interval: Duration,
    /// `drainTimeout`: how long a shutdown waits for running batches
    /// (default 7s; the daemon exits at most 2 s later).
    pub drain_timeout: Duration,
    /// `dedupWindow`: how long a `clientMsgID` keeps its seq for redeliveries
    /// (default 24h; at least 1ms).
    pub dedup_window: Duration,
    /// `dedupLedger`: record every seq assignment in Mongo before its seqs
    /// are used, so dedup survives a Redis that lost its data (default
    /// true; one insert per conversation batch).
    pub dedup_ledger: bool,
    /// `sessionTimeout`: how long the Kafka group coordinator waits for a
    /// silent member (a killed process) before handing its partitions to
    /// the others (default 10s; 1s to 1h, within the broker's
    /// `group.min/max.session.timeout.ms`).
    pub session_timeout: Duration,
    /// `staticMembership`: join the consumer groups as static members,
    /// `group.instance.id` = `msgtransfer-<index>-<loop>` (default false).
    /// A restarted process (same `-i`) then takes its partitions straight
    /// back, without a rebalance and without waiting out
    /// `sessionTimeout`; a stopped one keeps them, unconsumed, until
    /// `sessionTimeout` passes. Every process needs its own `-i`.
    pub static_membership: bool,
    /// `redisWaitReplicas`: replicas that must confirm every seq assignment
    /// (`WAIT`) before the seqs are used: the failover fence. Default: 1
    /// in sentinel mode, 0 otherwise.
    pub redis_wait_replicas: Option<u32>,
    /// `redisWaitTimeout`: how long one `WAIT` may take before the batch
    /// is retried (default 1s).
    pub redis_wait_timeout: Duration,
    /// `retryBackoffInitial` / `retryBackoffMax`: the delays between retries
    /// of a failed step (default 10ms doubling up to 2s).
    pub retry_backoff: Backoff,
    /// `producerMaxRecordBytes`: the largest record produced (default
    /// 1000000, sarama's and OpenIM's limit; 8192 to 1000000000).
    pub producer_max_record_bytes: usize,
    /// `deadLetterTopic`: where refused records go (default
    /// `msgtransfer-dlq`); must differ from the other topics.
    pub dead_letter_topic: String,
    /// Limits on input records (`maxRecordBytes`, default
    /// `producerMaxRecordBytes`; `maxMessagesPerRecord`, `maxContentBytes`,
    /// `maxFieldBytes`, `maxOptions`, `maxAtUsers`, `maxHeaders`,
    /// `maxHeaderBytes`: see [`Limits`]). A record over any limit goes
    /// whole to the dead-letter topic.
    pub limits: Limits,
}

impl Default for Tuning {
    fn default() -> Self {
        let service = ServiceConfig::default();
        Tuning {
            transfer_loops: 2,
            linger: service.transfer_loop.linger,
            max_batch: service.transfer_loop.max_batch,
            persist_max_batch: service.persist_loop.max_batch,
            persist_linger: service.persist_loop.linger,
            max_queued_records: service.transfer_loop.max_queued,
            commit_interval: service.transfer_loop.commit_interval,
            drain_timeout: Duration::from_secs(7),
            dedup_window: Duration::from_millis(service.transfer.cache.dedup_window_ms as u64),
            dedup_ledger: service.transfer.cache.ledger,
            session_timeout: Duration::from_secs(10),
            static_membership: false,
            redis_wait_replicas: None,
            redis_wait_timeout: Duration::from_secs(1),
            retry_backoff: service.transfer.backoff,
            producer_max_record_bytes: 1_000_000,
            dead_letter_topic: service.transfer.topics.dlq.to_string(),
            limits: service.transfer.limits.clone(),
        }
    }
}

impl Config {
    /// The service's settings: topics and groups from `kafka.yml`, knobs
    /// from `rustTransfer`, everything else at [`ServiceConfig::default`].
    pub fn service_config(&self) -> ServiceConfig {
        let t = &self.tuning;
        let base = ServiceConfig::default();
        let dlq: Arc<str> = Arc::from(t.dead_letter_topic.as_str());
        let transfer = TransferConfig {
            topics: Topics {
                to_redis: Arc::from(self.kafka.to_redis_topic.as_str()),
                to_mongo: Arc::from(self.kafka.to_mongo_topic.as_str()),
                to_push: Arc::from(self.kafka.to_push_topic.as_str()),
                dlq: dlq.clone(),
            },
            cache: CacheConfig {
                dedup_window_ms: i64::try_from(t.dedup_window.as_millis()).unwrap_or(i64::MAX),
                wait_replicas: t.redis_wait_replicas.unwrap_or(
                    if matches!(self.redis.mode, RedisMode::Sentinel(_)) {
                        1
                    } else {
                        0
                    },
                ),
                wait_timeout_ms: u64::try_from(t.redis_wait_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                cache_in_script: !matches!(self.redis.mode, RedisMode::Cluster),
                ledger: t.dedup_ledger,
                ..base.transfer.cache
            },
            backoff: t.retry_backoff.clone(),
            limits: t.limits.clone(),
            ..base.transfer
        };
        let tune = |c: ConsumerConfig, max_batch: usize, linger: Duration| ConsumerConfig {
            max_batch,
            batch_target: c.batch_target.min(max_batch),
            linger,
            max_queued: t.max_queued_records,
            commit_interval: t.commit_interval,
            drain_timeout: t.drain_timeout,
            dlq_topic: dlq.clone(),
            backoff: t.retry_backoff.clone(),
            ..c
        };
        ServiceConfig {
            transfer,
            transfer_loop: tune(base.transfer_loop, t.max_batch, t.linger),
            persist_loop: tune(base.persist_loop, t.persist_max_batch, t.persist_linger),
            groups: Groups {
                to_redis: self.kafka.to_redis_group_id.clone(),
                to_mongo: self.kafka.to_mongo_group_id.clone(),
            },
        }
    }
}

/// Loads the configuration folder `dir` for instance `index`, with `env`
/// (the daemon passes `std::env::vars()`; nothing here reads the process
/// environment) overriding the files' fields.
pub fn load(
    dir: &Path,
    index: usize,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let mut files = Vec::with_capacity(schema::FILES.len());
    for file in schema::FILES {
        let mut value = tree::read(dir, file)?;
        let sources = tree::apply_env(&mut value, file, env)?;
        tree::check(&value, file, &sources)?;
        files.push((file, value, sources));
    }
    let view = |name: &str| {
        let (file, value, sources) = files
            .iter()
            .find(|(file, _, _)| file.name == name)
            .expect("every schema file was read");
        View::root(value, file, sources)
    };
    let transfer = view(schema::MSGTRANSFER.name);
    let tuning = tuning(&transfer.section("rustTransfer"))?;
    let kafka = kafka(&view(schema::KAFKA.name), &tuning)?;
    Ok(Config {
        dir: dir.to_owned(),
        index,
        prometheus_port: prometheus_port(&transfer.section("prometheus"), index)?,
        redis: redis(&view(schema::REDIS.name))?,
        mongo: mongo(&view(schema::MONGODB.name))?,
        webhooks: webhooks(&view(schema::WEBHOOKS.name))?,
        log: log(&view(schema::LOG.name), &transfer.section("rustTransfer"))?,
        kafka,
        tuning,
    })
}

// ---------------------------------------------------------------- readers

/// [`uint`] as a count.
fn count(v: &View, name: &str, default: usize, min: u64, max: u64) -> Result<usize, ConfigError> {
    Ok(uint(v, name, default as u64, min, max)? as usize)
}

/// A whole number in `min..=max`, `default` when not set.
fn uint(v: &View, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    match v.int(name) {
        None => Ok(default),
        Some(n) if n >= 0 && (n as u64) >= min && (n as u64) <= max => Ok(n as u64),
        Some(n) => Err(v.err(name, format!("must be between {min} and {max}, got {n}"))),
    }
}

/// A duration of at least `min`, `default` when not set.
fn duration(
    v: &View,
    name: &str,
    default: Duration,
    min: Duration,
) -> Result<Duration, ConfigError> {
    let d = v.duration(name).unwrap_or(default);
    if d < min {
        return Err(v.err(name, format!("must be at least {min:?}, got {d:?}")));
    }
    Ok(d)
}

/// A non-empty list of non-empty `host:port` addresses.
fn addresses(v: &View, name: &str, what: &str) -> Result<Vec<String>, ConfigError> {
    let list: Vec<String> = v
        .str_list(name)
        .iter()
        .map(|a| a.trim().to_owned())
        .collect();
    if list.is_empty() {
        return Err(v.err(name, format!("must list at least one {what} address")));
    }
    if let Some(i) = list.iter().position(String::is_empty) {
        return Err(v.err(&format!("{name}[{i}]"), "empty address"));
    }
    Ok(list)
}

/// Text that falls back to `default` when not set or blank.
fn text_or(v: &View, name: &str, default: &str) -> String {
    match v.str(name).trim() {
        "" => default.to_owned(),
        s => s.to_owned(),
    }
}

/// Text that is `None` when not set or blank.
fn opt_text(v: &View, name: &str) -> Option<String> {
    v.opt_str(name).filter(|s| !s.trim().is_empty())
}

/// A Kafka topic name: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn topic(v: &View, name: &str, default: &str) -> Result<String, ConfigError> {
    let t = text_or(v, name, default);
    let legal = t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !legal {
        return Err(v.err(
            name,
            format!("not a valid Kafka topic name: {t:?} (use at most 249 of a-z, A-Z, 0-9, '.', '_', '-')"),
        ));
    }
    Ok(t)
}

fn tuning(v: &View) -> Result<Tuning, ConfigError> {
    let d = Tuning::default();
    let initial = duration(
        v,
        "retryBackoffInitial",
        d.retry_backoff.initial,
        Duration::from_millis(1),
    )?;
    let max = duration(
        v,
        "retryBackoffMax",
        d.retry_backoff.max.max(initial),
        Duration::ZERO,
    )?;
    if max < initial {
        return Err(v.err(
            "retryBackoffMax",
            format!("must not be shorter than retryBackoffInitial ({initial:?}), got {max:?}"),
        ));
    }
    let session_timeout = duration(
        v,
        "sessionTimeout",
        d.session_timeout,
        Duration::from_secs(1),
    )?;
    if session_timeout > Duration::from_secs(3600) {
        return Err(v.err(
            "sessionTimeout",
            format!("must be at most 1h, got {session_timeout:?}"),
        ));
    }
    let count = |name, default, min, max| count(v, name, default, min, max);
    let producer_max_record_bytes = count(
        "producerMaxRecordBytes",
        d.producer_max_record_bytes,
        8192,
        1_000_000_000,
    )?;
    Ok(Tuning {
        transfer_loops: count("transferLoops", d.transfer_loops, 1, 256)?,
        linger: duration(v, "linger", d.linger, Duration::ZERO)?,
        max_batch: count("maxBatch", d.max_batch, 1, 1_000_000)?,
        persist_max_batch: count("persistMaxBatch", d.persist_max_batch, 1, 1_000_000)?,
        persist_linger: duration(v, "persistLinger", d.persist_linger, Duration::ZERO)?,
        max_queued_records: count("maxQueuedRecords", d.max_queued_records, 1, 100_000_000)?,
        commit_interval: duration(
            v,
            "commitInterval",
            d.commit_interval,
            Duration::from_millis(1),
        )?,
        drain_timeout: duration(v, "drainTimeout", d.drain_timeout, Duration::ZERO)?,
        dedup_window: duration(v, "dedupWindow", d.dedup_window, Duration::from_millis(1))?,
        dedup_ledger: v.bool("dedupLedger").unwrap_or(d.dedup_ledger),
        session_timeout,
        static_membership: v.bool("staticMembership").unwrap_or(d.static_membership),
        redis_wait_replicas: match v.int("redisWaitReplicas") {
            None => d.redis_wait_replicas,
            Some(n) => {
                Some(u32::try_from(n).ok().filter(|n| *n <= 16).ok_or_else(|| {
                    v.err("redisWaitReplicas", format!("must be 0 to 16, got {n}"))
                })?)
            }
        },
        redis_wait_timeout: duration(
            v,
            "redisWaitTimeout",
            d.redis_wait_timeout,
            Duration::from_millis(1),
        )?,
        retry_backoff: Backoff { initial, max },
        producer_max_record_bytes,
        dead_letter_topic: topic(v, "deadLetterTopic", &d.dead_letter_topic)?,
        limits: limits(v, &d.limits, producer_max_record_bytes)?,
    })
}

/// The input limits; `maxRecordBytes` defaults to the producer's limit.
fn limits(v: &View, d: &Limits, producer_max_record_bytes: usize) -> Result<Limits, ConfigError> {
    let count = |name, default, min, max| count(v, name, default, min, max);
    let record_bytes = count(
        "maxRecordBytes",
        producer_max_record_bytes,
        8192,
        1_000_000_000,
    )?;
    Ok(Limits {
        record_bytes,
        messages_per_record: count("maxMessagesPerRecord", d.messages_per_record, 1, 10_000_000)?,
        content_bytes: count("maxContentBytes", d.content_bytes, 1, 1_000_000_000)?,
        field_bytes: count("maxFieldBytes", d.field_bytes, 16, 1_000_000_000)?,
        options: count("maxOptions", d.options, 0, 1_000_000)?,
        at_users: count("maxAtUsers", d.at_users, 0, 10_000_000)?,
        headers: count("maxHeaders", d.headers, 4, 1_000_000)?,
        header_bytes: count("maxHeaderBytes", d.header_bytes, 64, 1_000_000_000)?,
    })
}

fn kafka(v: &View, tuning: &Tuning) -> Result<KafkaConfig, ConfigError> {
    let raw_ack = v.str("producerAck");
    let producer_ack = match raw_ack.trim().to_ascii_lowercase().as_str() {
        "" | "wait_for_all" => ProducerAck::WaitForAll,
        "wait_for_local" => ProducerAck::WaitForLocal,
        "no_response" => ProducerAck::NoResponse,
        _ => {
            return Err(v.err(
                "producerAck",
                format!(
                    "expected one of no_response, wait_for_local, wait_for_all, got {raw_ack:?}"
                ),
            ));
        }
    };
    let raw_codec = v.str("compressType");
    let compression = match raw_codec.trim().to_ascii_lowercase().as_str() {
        "" | "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => {
            return Err(v.err(
                "compressType",
                format!("expected one of none, gzip, snappy, lz4, zstd, got {raw_codec:?}"),
            ));
        }
    };
    let tls_view = v.section("tls");
    let tls = KafkaTls {
        enabled: tls_view.bool("enableTLS").unwrap_or(false),
        ca_crt: opt_text(&tls_view, "caCrt"),
        client_crt: opt_text(&tls_view, "clientCrt"),
        client_key: opt_text(&tls_view, "clientKey"),
        client_key_pwd: tls_view.opt_str("clientKeyPwd").filter(|s| !s.is_empty()),
        insecure_skip_verify: tls_view.bool("insecureSkipVerify").unwrap_or(false),
    };
    if tls.enabled {
        match (&tls.client_crt, &tls.client_key) {
            (Some(_), None) => {
                return Err(tls_view.err("clientKey", "required when tls.clientCrt is set"));
            }
            (None, Some(_)) => {
                return Err(tls_view.err("clientCrt", "required when tls.clientKey is set"));
            }
            _ => {}
        }
    }
    let kafka = KafkaConfig {
        addresses: addresses(v, "address", "broker")?,
        username: v.str("username"),
        password: v.str("password"),
        producer_ack,
        compression,
        to_redis_topic: topic(v, "toRedisTopic", "toRedis")?,
        to_mongo_topic: topic(v, "toMongoTopic", "toMongo")?,
        to_push_topic: topic(v, "toPushTopic", "toPush")?,
        to_offline_push_topic: topic(v, "toOfflinePushTopic", "toOfflinePush")?,
        to_redis_group_id: text_or(v, "toRedisGroupID", "redis"),
        to_mongo_group_id: text_or(v, "toMongoGroupID", "mongo"),
        to_push_group_id: text_or(v, "toPushGroupID", "push"),
        to_offline_push_group_id: text_or(v, "toOfflinePushGroupID", "offlinePush"),
        tls,
    };
    // One topic for two roles would feed the service its own output.
    let roles = [
        ("toRedisTopic", &kafka.to_redis_topic),
        ("toMongoTopic", &kafka.to_mongo_topic),
        ("toPushTopic", &kafka.to_push_topic),
    ];
    for (i, (name, t)) in roles.iter().enumerate() {
        if let Some((other, _)) = roles[..i].iter().find(|(_, o)| o == t) {
            return Err(v.err(name, format!("must differ from {other} (both are {t:?})")));
        }
        if **t == tuning.dead_letter_topic {
            return Err(ConfigError {
                file: schema::MSGTRANSFER.name.to_owned(),
                field: Some("rustTransfer.deadLetterTopic".to_owned()),
                message: format!("must differ from kafka.yml {name} (both are {t:?})"),
            });
        }
    }
    if kafka.to_redis_group_id == kafka.to_mongo_group_id {
        return Err(v.err(
            "toMongoGroupID",
            format!(
                "must differ from toRedisGroupID (both are {:?})",
                kafka.to_mongo_group_id
            ),
        ));
    }
    Ok(kafka)
}

fn redis(v: &View) -> Result<RedisConfig, ConfigError> {
    let raw_mode = v.str("redisMode");
    let mode = match raw_mode.trim().to_ascii_lowercase().as_str() {
        "" if v.bool("clusterMode") == Some(true) => RedisMode::Cluster,
        "" | "standalone" => RedisMode::Standalone,
        "cluster" => RedisMode::Cluster,
        "sentinel" => {
            let s = v.section("sentinelMode");
            let master_name = s.str("masterName").trim().to_owned();
            if master_name.is_empty() {
                return Err(s.err("masterName", "required when redisMode is sentinel"));
            }
            let addresses = match s.str_list("sentinelsAddrs").is_empty() {
                true => {
                    return Err(s.err(
                        "sentinelsAddrs",
                        "must list at least one sentinel address when redisMode is sentinel",
                    ));
                }
                false => addresses(&s, "sentinelsAddrs", "sentinel")?,
            };
            RedisMode::Sentinel(SentinelConfig {
                master_name,
                addresses,
                route_by_latency: s.bool("routeByLatency").unwrap_or(false),
                route_randomly: s.bool("routeRandomly").unwrap_or(false),
            })
        }
        _ => {
            return Err(v.err(
                "redisMode",
                format!("unknown mode {raw_mode:?} (expected standalone, cluster or sentinel)"),
            ));
        }
    };
    let addresses = match (&mode, v.str_list("address").is_empty()) {
        // Sentinel mode finds the primary through the sentinels.
        (RedisMode::Sentinel(_), true) => Vec::new(),
        _ => addresses(v, "address", "Redis")?,
    };
    Ok(RedisConfig {
        addresses,
        username: v.str("username"),
        password: v.str("password"),
        mode,
        db: uint(v, "db", 0, 0, u32::MAX as u64)? as u32,
        max_retry: uint(v, "maxRetry", 10, 0, u32::MAX as u64)? as u32,
        pool_size: uint(v, "poolSize", 0, 0, u32::MAX as u64)? as u32,
    })
}

fn mongo(v: &View) -> Result<MongoConfig, ConfigError> {
    let database = v.str("database").trim().to_owned();
    if database.is_empty() {
        return Err(v.err("database", "required"));
    }
    if database.len() > 63 || database.contains(['/', '\\', '.', ' ', '"', '$']) {
        return Err(v.err(
            "database",
            format!("not a valid MongoDB database name: {database:?}"),
        ));
    }
    let max_pool_size = match uint(v, "maxPoolSize", 0, 0, u32::MAX as u64)? {
        0 => 100,
        n => n as u32,
    };
    let max_retry = match uint(v, "maxRetry", 0, 0, u32::MAX as u64)? {
        0 => 3,
        n => n as u32,
    };
    let uri = match opt_text(v, "uri") {
        Some(uri) => {
            let uri = uri.trim().to_owned();
            if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                return Err(v.err("uri", "must start with mongodb:// or mongodb+srv://"));
            }
            uri
        }
        None => {
            if v.str_list("address").is_empty() {
                return Err(v.err("uri", "either uri or address must be set"));
            }
            let hosts = addresses(v, "address", "MongoDB")?.join(",");
            let (user, pass) = (v.str("username"), v.str("password"));
            let credentials = match user.is_empty() || pass.is_empty() {
                true => String::new(),
                false => format!("{}:{}@", percent_encode(&user), percent_encode(&pass)),
            };
            let auth_source = text_or(v, "authSource", &database);
            format!(
                "mongodb://{credentials}{hosts}/{database}?authSource={}&maxPoolSize={max_pool_size}",
                percent_encode(&auth_source)
            )
        }
    };
    Ok(MongoConfig {
        uri,
        database,
        max_pool_size,
        max_retry,
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn prometheus_port(v: &View, index: usize) -> Result<Option<u16>, ConfigError> {
    if !v.bool("enable").unwrap_or(false) {
        return Ok(None);
    }
    let ports = v.int_list("ports");
    if let Some((i, p)) = ports
        .iter()
        .enumerate()
        .find(|(_, p)| !(1..=65535).contains(*p))
    {
        return Err(v.err(&format!("ports[{i}]"), format!("not a port number: {p}")));
    }
    if ports.is_empty() && v.bool("autoSetPorts").unwrap_or(false) {
        return Ok(Some(0));
    }
    match ports.get(index) {
        Some(&p) => Ok(Some(p as u16)),
        None => Err(v.err(
            "ports",
            format!(
                "instance index {index} has no port: the list has {} port(s), one per instance \
                 (list more ports or set prometheus.enable to false)",
                ports.len()
            ),
        )),
    }
}

fn webhooks(v: &View) -> Result<WebhooksConfig, ConfigError> {
    let url = v.str("url").trim().to_owned();
    let h = v.section("afterMsgSaveDB");
    let after = AfterHook {
        enable: h.bool("enable").unwrap_or(false),
        timeout: Duration::from_secs(match uint(&h, "timeout", 5, 0, 3600)? {
            0 => 5,
            n => n,
        }),
        attention_ids: h.str_list("attentionIds"),
        allowed_types: h.type_list("allowedTypes"),
        denied_types: h.type_list("deniedTypes"),
    };
    if after.enable && !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(v.err(
            "url",
            format!(
                "must be an http:// or https:// URL when afterMsgSaveDB.enable is true, got {url:?}"
            ),
        ));
    }
    Ok(WebhooksConfig {
        url,
        after_msg_save_db: after,
    })
}

fn log(v: &View, knobs: &View) -> Result<LogConfig, ConfigError> {
    let is_json = v.bool("isJson").unwrap_or(false);
    let format = match opt_text(knobs, "logFormat").map(|s| s.trim().to_ascii_lowercase()) {
        None => match is_json {
            true => LogFormat::Json,
            false => LogFormat::Text,
        },
        Some(s) if s == "text" => LogFormat::Text,
        Some(s) if s == "json" => LogFormat::Json,
        Some(_) => {
            return Err(knobs.err(
                "logFormat",
                format!("expected text or json, got {:?}", knobs.str("logFormat")),
            ));
        }
    };
    Ok(LogConfig {
        storage_location: v.str("storageLocation"),
        rotation_time_hours: uint(v, "rotationTime", 24, 0, u32::MAX as u64)? as u32,
        remain_rotation_count: uint(v, "remainRotationCount", 2, 0, u32::MAX as u64)? as u32,
        remain_log_level: uint(v, "remainLogLevel", 6, 0, 6)? as u8,
        is_stdout: v.bool("isStdout").unwrap_or(false),
        is_json,
        with_stack: v.bool("withStack").unwrap_or(false),
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved() {
        assert_eq!(percent_encode("openIM123"), "openIM123");
        assert_eq!(percent_encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
        assert_eq!(percent_encode("a-b.c_d~"), "a-b.c_d~");
    }

    #[test]
    fn tuning_defaults_track_the_service_defaults() {
        let t = Tuning::default();
        let s = ServiceConfig::default();
        assert_eq!(t.linger, s.transfer_loop.linger);
        assert_eq!(t.max_batch, s.transfer_loop.max_batch);
        assert_eq!(t.persist_max_batch, s.persist_loop.max_batch);
        assert_eq!(t.persist_linger, s.persist_loop.linger);
        assert_eq!(t.retry_backoff, s.transfer.backoff);
        assert_eq!(t.dead_letter_topic, &*s.transfer.topics.dlq);
        assert_eq!(t.dedup_window, Duration::from_secs(24 * 3600));
        assert_eq!(t.drain_timeout, Duration::from_secs(7));
    }

    #[test]
    fn error_display_names_file_and_field() {
        let e = ConfigError {
            file: "redis.yml".into(),
            field: Some("redisMode".into()),
            message: "unknown mode \"clustr\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "redis.yml: redisMode: unknown mode \"clustr\""
        );
        let e = ConfigError::file("mongodb.yml", "unknown field \"uris\"");
        assert_eq!(e.to_string(), "mongodb.yml: unknown field \"uris\"");
    }
}
