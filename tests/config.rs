//! The configuration loader against the shipped `config/` folder and
//! variants of it written to temporary folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use msgtransfer::config::{
    self, Compression, Config, ConfigError, LogFormat, ProducerAck, RedisMode, Tuning,
};
use msgtransfer::domain::limits::Limits;
use msgtransfer::service::ServiceConfig;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A copy of the shipped folder in a fresh temporary folder, removed on drop.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "msgtransfer-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(shipped()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        Folder(dir)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap()
    }

    fn write(&self, file: &str, text: &str) -> &Self {
        std::fs::write(self.0.join(file), text).unwrap();
        self
    }

    /// Replaces the line starting (after indentation) with `key:` in `file`.
    fn set(&self, file: &str, key: &str, line: &str) -> &Self {
        let text = self.read(file);
        let mut found = false;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if !found && l.trim_start().starts_with(&format!("{key}:")) {
                    found = true;
                    let indent = &l[..l.len() - l.trim_start().len()];
                    format!("{indent}{line}")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        assert!(found, "{file} has no line {key}:");
        self.write(file, &(out.join("\n") + "\n"))
    }

    fn append(&self, file: &str, text: &str) -> &Self {
        let mut all = self.read(file);
        all.push_str(text);
        self.write(file, &all)
    }

    fn load(&self) -> Result<Config, ConfigError> {
        config::load(&self.0, 0, &no_env())
    }

    fn load_err(&self) -> ConfigError {
        match self.load() {
            Ok(_) => panic!("expected the configuration to be refused"),
            Err(e) => {
                println!("{e}");
                e
            }
        }
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[track_caller]
fn assert_error(e: &ConfigError, file: &str, field: Option<&str>, needle: &str) {
    assert_eq!(e.file, file, "{e}");
    assert_eq!(e.field.as_deref(), field, "{e}");
    assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("{file}: ")), "{shown}");
    if let Some(field) = field {
        assert!(shown.starts_with(&format!("{file}: {field}: ")), "{shown}");
    }
}

// ---------------------------------------------------------------- the shipped folder

#[test]
fn shipped_folder_loads_with_local_backends() {
    let c = config::load(&shipped(), 0, &no_env()).unwrap();
    assert_eq!(c.index, 0);
    assert_eq!(c.kafka.addresses, ["127.0.0.1:9092"]);
    assert_eq!(c.kafka.producer_ack, ProducerAck::WaitForAll);
    assert_eq!(c.kafka.compression, Compression::None);
    assert_eq!(c.kafka.sasl_plain(), None);
    assert!(!c.kafka.tls.enabled);
    assert_eq!(c.kafka.to_redis_topic, "toRedis");
    assert_eq!(c.kafka.to_mongo_topic, "toMongo");
    assert_eq!(c.kafka.to_push_topic, "toPush");
    assert_eq!(c.kafka.to_redis_group_id, "redis");
    assert_eq!(c.kafka.to_mongo_group_id, "mongo");
    assert_eq!(c.redis.addresses, ["127.0.0.1:6379"]);
    assert_eq!(c.redis.mode, RedisMode::Standalone);
    assert_eq!(c.redis.password, "");
    assert_eq!(c.redis.db, 0);
    assert_eq!(c.mongo.uri, "mongodb://127.0.0.1:27017");
    assert_eq!(c.mongo.database, "openim_v3");
    assert_eq!(c.mongo.max_pool_size, 100);
    assert_eq!(c.prometheus_port, Some(12020));
    assert!(!c.webhooks.after_msg_save_db.enable);
    assert_eq!(c.webhooks.after_msg_save_db.timeout, Duration::from_secs(5));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level(), "info");
    // Every knob is written out at its default.
    assert_eq!(c.tuning, Tuning::default());
}

#[test]
fn service_config_carries_the_knobs() {
    let c = config::load(&shipped(), 0, &no_env()).unwrap();
    let s = c.service_config();
    let d = ServiceConfig::default();
    assert_eq!(s.transfer.topics, d.transfer.topics);
    assert_eq!(s.transfer.cache, d.transfer.cache);
    assert_eq!(s.transfer.backoff, d.transfer.backoff);
    assert_eq!(s.transfer.assign_chunk, d.transfer.assign_chunk);
    assert_eq!(s.groups, d.groups);
    for (got, want) in [
        (&s.transfer_loop, &d.transfer_loop),
        (&s.persist_loop, &d.persist_loop),
    ] {
        assert_eq!(got.max_batch, want.max_batch);
        assert_eq!(got.batch_target, want.batch_target);
        assert_eq!(got.linger, want.linger);
        assert_eq!(got.max_queued, want.max_queued);
        assert_eq!(got.commit_interval, want.commit_interval);
        assert_eq!(got.dlq_topic, want.dlq_topic);
        assert_eq!(got.backoff, want.backoff);
        assert_eq!(got.max_inflight, want.max_inflight);
        assert_eq!(got.drain_timeout, Duration::from_secs(7));
    }

    // Changed knobs and names reach the service.
    let f = Folder::new();
    f.set("kafka.yml", "toRedisTopic", "toRedisTopic: in")
        .set("kafka.yml", "toRedisGroupID", "toRedisGroupID: g1")
        .set("openim-msgtransfer.yml", "maxBatch", "maxBatch: 50")
        .set("openim-msgtransfer.yml", "dedupWindow", "dedupWindow: 1h")
        .set(
            "openim-msgtransfer.yml",
            "deadLetterTopic",
            "deadLetterTopic: dead",
        )
        .set(
            "openim-msgtransfer.yml",
            "retryBackoffMax",
            "retryBackoffMax: 30s",
        );
    let s = f.load().unwrap().service_config();
    assert_eq!(&*s.transfer.topics.to_redis, "in");
    assert_eq!(&*s.transfer.topics.dlq, "dead");
    assert_eq!(&*s.transfer_loop.dlq_topic, "dead");
    assert_eq!(&*s.persist_loop.dlq_topic, "dead");
    assert_eq!(s.groups.to_redis, "g1");
    assert_eq!(s.transfer_loop.max_batch, 50);
    assert_eq!(s.transfer_loop.batch_target, 50);
    assert_eq!(s.persist_loop.max_batch, 1000);
    assert_eq!(s.transfer.cache.dedup_window_ms, 3_600_000);
    f.set(
        "openim-msgtransfer.yml",
        "sessionTimeout",
        "sessionTimeout: 6s",
    );
    f.set(
        "openim-msgtransfer.yml",
        "staticMembership",
        "staticMembership: true",
    );
    assert!(s.transfer.cache.ledger, "the dedup ledger is on as shipped");
    f.set(
        "openim-msgtransfer.yml",
        "dedupLedger",
        "dedupLedger: false",
    );
    let t = f.load().unwrap().tuning;
    assert_eq!(t.session_timeout, Duration::from_secs(6));
    assert!(t.static_membership);
    assert!(!t.dedup_ledger);
    assert!(!f.load().unwrap().service_config().transfer.cache.ledger);
    assert_eq!(s.transfer.backoff.max, Duration::from_secs(30));
    assert_eq!(s.transfer_loop.backoff.max, Duration::from_secs(30));
}

#[test]
fn defaults_apply_when_rust_transfer_is_absent() {
    let f = Folder::new();
    let text = f.read("openim-msgtransfer.yml");
    let cut = text.find("rustTransfer:").unwrap();
    f.write("openim-msgtransfer.yml", &text[..cut]);
    let c = f.load().unwrap();
    assert_eq!(c.tuning, Tuning::default());
    assert_eq!(c.log.format, LogFormat::Text);

    // Without logFormat, log.yml's isJson decides.
    f.set("log.yml", "isJson", "isJson: true");
    assert_eq!(f.load().unwrap().log.format, LogFormat::Json);

    // An empty section is the same as none.
    f.append("openim-msgtransfer.yml", "rustTransfer:\n");
    assert_eq!(f.load().unwrap().tuning, Tuning::default());
}

#[test]
fn openim_v38_style_files_load() {
    // Shaped like OpenIM's own files: empty values (null), the older
    // `clusterMode` switch, a URI built from parts, every webhook listed.
    let f = Folder::new();
    f.write(
        "kafka.yml",
        "username: \"openIM\"\npassword: \"openIM123\"\nproducerAck:\ncompressType: none\n\
         address: [localhost:19094]\ntoRedisTopic: toRedis\ntoMongoTopic: toMongo\n\
         toPushTopic: toPush\ntoOfflinePushTopic: toOfflinePush\ntoRedisGroupID: redis\n\
         toMongoGroupID: mongo\ntoPushGroupID: push\ntoOfflinePushGroupID: offlinePush\n\
         tls:\n  enableTLS: false\n  caCrt:\n  clientCrt:\n  clientKey:\n  clientKeyPwd:\n  \
         insecureSkipVerify: false\n",
    )
    .write(
        "redis.yml",
        "address: [ localhost:16379 ]\nusername: ''\npassword: openIM123\n\
         enablePipeline: false\nclusterMode: true\ndb: 0\nmaxRetry: 10\n",
    )
    .write(
        "mongodb.yml",
        "uri:\naddress: [localhost:37017]\ndatabase: openim_v3\nusername: openIM\n\
         password: openIM123\nauthSource: openim_v3\nmaxPoolSize: 100\nmaxRetry: 10\n\
         mongoMode: \"standalone\"\nreplicaSet:\n  name: rs0\n  hosts: [127.0.0.1:37017]\n  \
         readConcern: majority\n  maxStaleness: 90s\nreadPreference:\n  mode: primary\n  \
         maxStaleness: 90s\n  tagSets:\n    - datacenter: \"cn-east\"\n      rack: \"1\"\n    - {}\n\
         writeConcern:\n  w: majority\n  j: true\n  wtimeout: 30s\n",
    )
    .write(
        "share.yml",
        "secret: openIM123\nimAdminUserID: [ imAdmin ]\nmultiLogin:\n  policy: 1\n  maxNumOneEnd: 30\n",
    )
    .write(
        "log.yml",
        "storageLocation: ../../../../logs/\nrotationTime: 24\nremainRotationCount: 2\n\
         remainLogLevel: 6\nisStdout: false\nisJson: false\nisSimplify: false\nwithStack: false\n",
    )
    .write(
        "openim-msgtransfer.yml",
        "prometheus:\n  enable: true\n  autoSetPorts: true\n  ports:\n\nratelimiter:\n  \
         enable: false\n  window: 20s\n  bucket: 500\n  cpuThreshold: 850\n\ncircuitBreaker:\n  \
         enable: false\n  window: 5s\n  bucket: 100\n  success: 0.6\n  request: 500\n",
    )
    .write(
        "webhooks.yml",
        "url: http://127.0.0.1:10006/callbackExample\nbeforeSendSingleMsg:\n  enable: false\n  \
         timeout: 5\n  failedContinue: true\n  allowedTypes: []\n  deniedTypes: []\n\
         afterSendSingleMsg:\n  enable: false\n  timeout: 5\n  attentionIds: []\n\
         beforeAddBlack:\n  enable: false\n  timeout: 5\n  failedContinue:\n\
         afterMsgSaveDB:\n  enable: true\n  timeout: 0\n  deniedTypes: [1, \"200-500\"]\n\
         afterCreateGroupChatConversations:\n  enable: false\n  timeout: 5\n",
    );
    let c = f.load().unwrap();
    assert_eq!(c.kafka.producer_ack, ProducerAck::WaitForAll);
    assert_eq!(c.kafka.sasl_plain(), Some(("openIM", "openIM123")));
    assert_eq!(c.kafka.tls.ca_crt, None);
    assert_eq!(c.redis.mode, RedisMode::Cluster);
    assert_eq!(c.redis.password, "openIM123");
    assert_eq!(
        c.mongo.uri,
        "mongodb://openIM:openIM123@localhost:37017/openim_v3?authSource=openim_v3&maxPoolSize=100"
    );
    // autoSetPorts with no ports: any free port, as OpenIM does.
    assert_eq!(c.prometheus_port, Some(0));
    let hook = &c.webhooks.after_msg_save_db;
    assert!(hook.enable);
    assert_eq!(hook.timeout, Duration::from_secs(5));
    assert_eq!(hook.denied_types, [1..=1, 200..=500]);
    assert_eq!(c.log.level(), "debug");
    assert_eq!(c.tuning, Tuning::default());
}

#[test]
fn mongo_uri_is_built_from_parts_when_empty() {
    let f = Folder::new();
    f.set("mongodb.yml", "uri", "uri: ''")
        .set("mongodb.yml", "address", "address: [ h1:27017, h2:27017 ]")
        .set("mongodb.yml", "username", "username: root")
        .set("mongodb.yml", "password", "password: 'p@ss:word'")
        .set("mongodb.yml", "authSource", "authSource: admin")
        .set("mongodb.yml", "maxPoolSize", "maxPoolSize: 0");
    assert_eq!(
        f.load().unwrap().mongo.uri,
        "mongodb://root:p%40ss%3Aword@h1:27017,h2:27017/openim_v3?authSource=admin&maxPoolSize=100"
    );
    // No credentials: no user part at all.
    f.set("mongodb.yml", "password", "password: ''").set(
        "mongodb.yml",
        "authSource",
        "authSource:",
    );
    assert_eq!(
        f.load().unwrap().mongo.uri,
        "mongodb://h1:27017,h2:27017/openim_v3?authSource=openim_v3&maxPoolSize=100"
    );
    // Neither a uri nor an address.
    f.set("mongodb.yml", "address", "address: []");
    assert_error(
        &f.load_err(),
        "mongodb.yml",
        Some("uri"),
        "either uri or address",
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn unknown_fields_are_refused() {
    let f = Folder::new();
    f.append("mongodb.yml", "uris: mongodb://x\n");
    let e = f.load_err();
    assert_error(&e, "mongodb.yml", None, "unknown field \"uris\"");
    assert!(
        e.to_string()
            .starts_with("mongodb.yml: unknown field \"uris\"")
    );

    let f = Folder::new();
    f.set("kafka.yml", "enableTLS", "enableTls: true");
    let e = f.load_err();
    assert_error(&e, "kafka.yml", Some("tls"), "unknown field \"enableTls\"");
    assert!(e.message.contains("did you mean \"enableTLS\""), "{e}");

    let f = Folder::new();
    f.append("openim-msgtransfer.yml", "  lingr: 5ms\n");
    assert_error(
        &f.load_err(),
        "openim-msgtransfer.yml",
        Some("rustTransfer"),
        "unknown field \"lingr\"",
    );

    let f = Folder::new();
    f.append("webhooks.yml", "afterMsgSaveDb:\n  enable: true\n");
    assert_error(
        &f.load_err(),
        "webhooks.yml",
        None,
        "unknown field \"afterMsgSaveDb\" (did you mean \"afterMsgSaveDB\"?)",
    );
}

#[test]
fn limits_are_read_and_bad_ones_refused() {
    let d = Limits::default();
    let c = config::load(&shipped(), 0, &no_env()).unwrap();
    assert_eq!(c.tuning.limits, d);
    assert_eq!(c.service_config().transfer.limits, d);

    let f = Folder::new();
    f.set(
        "openim-msgtransfer.yml",
        "maxContentBytes",
        "maxContentBytes: 2048",
    )
    .set("openim-msgtransfer.yml", "maxOptions", "maxOptions: 8")
    .set(
        "openim-msgtransfer.yml",
        "producerMaxRecordBytes",
        "producerMaxRecordBytes: 200000",
    );
    let l = f.load().unwrap().service_config().transfer.limits;
    assert_eq!((l.content_bytes, l.options), (2048, 8));
    // The record limit follows the producer's unless set.
    assert_eq!(l.record_bytes, 200_000);

    for (key, line, needle) in [
        (
            "maxContentBytes",
            "maxContentBytes: 0",
            "must be between 1 and",
        ),
        ("maxHeaders", "maxHeaders: 2", "must be between 4 and"),
        (
            "maxFieldBytes",
            "maxFieldBytes: many",
            "expected a whole number",
        ),
    ] {
        let f = Folder::new();
        f.set("openim-msgtransfer.yml", key, line);
        let field = format!("rustTransfer.{key}");
        assert_error(
            &f.load_err(),
            "openim-msgtransfer.yml",
            Some(&field),
            needle,
        );
    }
    let f = Folder::new();
    f.append("openim-msgtransfer.yml", "  maxRecordBytes: 100\n");
    assert_error(
        &f.load_err(),
        "openim-msgtransfer.yml",
        Some("rustTransfer.maxRecordBytes"),
        "must be between 8192 and",
    );
}

#[test]
fn bad_enums_are_refused() {
    let f = Folder::new();
    f.set("kafka.yml", "producerAck", "producerAck: all");
    assert_error(
        &f.load_err(),
        "kafka.yml",
        Some("producerAck"),
        "expected one of no_response, wait_for_local, wait_for_all",
    );

    let f = Folder::new();
    f.set("kafka.yml", "compressType", "compressType: brotli");
    assert_error(
        &f.load_err(),
        "kafka.yml",
        Some("compressType"),
        "got \"brotli\"",
    );

    let f = Folder::new();
    f.set("redis.yml", "redisMode", "redisMode: clustr");
    let e = f.load_err();
    assert_error(
        &e,
        "redis.yml",
        Some("redisMode"),
        "unknown mode \"clustr\"",
    );
    assert!(
        e.to_string()
            .starts_with("redis.yml: redisMode: unknown mode \"clustr\"")
    );

    let f = Folder::new();
    f.set("openim-msgtransfer.yml", "logFormat", "logFormat: xml");
    assert_error(
        &f.load_err(),
        "openim-msgtransfer.yml",
        Some("rustTransfer.logFormat"),
        "expected text or json",
    );
}

#[test]
fn bad_durations_are_refused() {
    for (line, needle) in [
        ("linger: 5x", "unknown unit \"x\""),
        ("linger: 5", "expected a duration"),
        ("linger: '5'", "missing unit"),
        ("linger: -2ms", "negative"),
    ] {
        let f = Folder::new();
        f.set("openim-msgtransfer.yml", "linger", line);
        assert_error(
            &f.load_err(),
            "openim-msgtransfer.yml",
            Some("rustTransfer.linger"),
            needle,
        );
    }
    let f = Folder::new();
    f.set(
        "openim-msgtransfer.yml",
        "commitInterval",
        "commitInterval: 0s",
    );
    assert_error(
        &f.load_err(),
        "openim-msgtransfer.yml",
        Some("rustTransfer.commitInterval"),
        "at least",
    );
    let f = Folder::new();
    f.set(
        "openim-msgtransfer.yml",
        "retryBackoffMax",
        "retryBackoffMax: 1ms",
    );
    assert_error(
        &f.load_err(),
        "openim-msgtransfer.yml",
        Some("rustTransfer.retryBackoffMax"),
        "must not be shorter than retryBackoffInitial",
    );
    // OpenIM's own duration fields are checked too.
    let f = Folder::new();
    f.set("openim-msgtransfer.yml", "window", "window: twenty");
    assert_error(
        &f.load_err(),
        "openim-msgtransfer.yml",
        Some("ratelimiter.window"),
        "invalid duration \"twenty\"",
    );
}

#[test]
fn bad_values_are_refused() {
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "redis.yml",
            "db",
            "db: x",
            "db",
            "expected a whole number, got \"x\"",
        ),
        ("redis.yml", "db", "db: -1", "db", "must be between 0 and"),
        (
            "redis.yml",
            "address",
            "address: []",
            "address",
            "at least one Redis address",
        ),
        (
            "kafka.yml",
            "address",
            "address:",
            "address",
            "at least one broker address",
        ),
        (
            "kafka.yml",
            "address",
            "address: localhost:9092",
            "address",
            "expected a list",
        ),
        (
            "kafka.yml",
            "toMongoTopic",
            "toMongoTopic: toRedis",
            "toMongoTopic",
            "must differ from toRedisTopic",
        ),
        (
            "kafka.yml",
            "toRedisTopic",
            "toRedisTopic: 'to redis'",
            "toRedisTopic",
            "not a valid Kafka topic",
        ),
        (
            "mongodb.yml",
            "database",
            "database: ''",
            "database",
            "required",
        ),
        (
            "mongodb.yml",
            "uri",
            "uri: http://x",
            "uri",
            "must start with mongodb://",
        ),
        (
            "openim-msgtransfer.yml",
            "enable",
            "enable: yes",
            "prometheus.enable",
            "expected true or false, got \"yes\"",
        ),
        (
            "openim-msgtransfer.yml",
            "ports",
            "ports: [ 12020, 70000 ]",
            "prometheus.ports[1]",
            "not a port number",
        ),
        (
            "openim-msgtransfer.yml",
            "maxBatch",
            "maxBatch: 0",
            "rustTransfer.maxBatch",
            "must be between 1 and",
        ),
        (
            "openim-msgtransfer.yml",
            "transferLoops",
            "transferLoops: 1.5",
            "rustTransfer.transferLoops",
            "expected a whole number",
        ),
        (
            "webhooks.yml",
            "deniedTypes",
            "deniedTypes: [ 500-200 ]",
            "afterMsgSaveDB.deniedTypes[0]",
            "range",
        ),
        (
            "log.yml",
            "remainLogLevel",
            "remainLogLevel: 7",
            "remainLogLevel",
            "between 0 and 6",
        ),
    ];
    for (file, key, line, field, needle) in cases {
        let f = Folder::new();
        f.set(file, key, line);
        assert_error(&f.load_err(), file, Some(field), needle);
    }
    let f = Folder::new();
    f.set(
        "openim-msgtransfer.yml",
        "deadLetterTopic",
        "deadLetterTopic: toRedis",
    );
    assert_error(
        &f.load_err(),
        "openim-msgtransfer.yml",
        Some("rustTransfer.deadLetterTopic"),
        "must differ from kafka.yml toRedisTopic",
    );
    let f = Folder::new();
    f.set("webhooks.yml", "enable", "enable: true")
        .set("webhooks.yml", "url", "url: ''");
    assert_error(
        &f.load_err(),
        "webhooks.yml",
        Some("url"),
        "http:// or https://",
    );
    let f = Folder::new();
    f.set("kafka.yml", "enableTLS", "enableTLS: true").set(
        "kafka.yml",
        "clientCrt",
        "clientCrt: client.crt",
    );
    assert_error(
        &f.load_err(),
        "kafka.yml",
        Some("tls.clientKey"),
        "required",
    );
    let f = Folder::new();
    f.write("redis.yml", "address: [ 127.0.0.1:6379\n");
    assert_error(&f.load_err(), "redis.yml", None, "not valid YAML");
}

#[test]
fn a_missing_file_is_named() {
    for file in [
        "openim-msgtransfer.yml",
        "kafka.yml",
        "redis.yml",
        "mongodb.yml",
        "share.yml",
        "webhooks.yml",
        "log.yml",
    ] {
        let f = Folder::new();
        std::fs::remove_file(f.0.join(file)).unwrap();
        let e = f.load_err();
        assert_error(&e, file, None, "cannot read");
        assert!(
            e.message.contains(&*f.0.join(file).to_string_lossy()),
            "{e}"
        );
    }
    // discovery.yml is not needed.
    let f = Folder::new();
    std::fs::remove_file(f.0.join("discovery.yml")).unwrap();
    f.load().unwrap();
}

#[test]
fn the_index_must_have_a_port() {
    let e = config::load(&shipped(), 3, &no_env()).unwrap_err();
    println!("{e}");
    assert_error(
        &e,
        "openim-msgtransfer.yml",
        Some("prometheus.ports"),
        "instance index 3",
    );
    assert!(e.message.contains("the list has 1 port(s)"), "{e}");

    let f = Folder::new();
    f.set("openim-msgtransfer.yml", "ports", "ports: [ 12020, 12021 ]");
    assert_eq!(
        config::load(&f.0, 1, &no_env()).unwrap().prometheus_port,
        Some(12021)
    );
    // No port is needed when Prometheus is off.
    f.set("openim-msgtransfer.yml", "enable", "enable: false");
    assert_eq!(
        config::load(&f.0, 9, &no_env()).unwrap().prometheus_port,
        None
    );
}

#[test]
fn sentinel_mode_needs_its_settings() {
    let f = Folder::new();
    f.set("redis.yml", "redisMode", "redisMode: sentinel").set(
        "redis.yml",
        "masterName",
        "masterName: ''",
    );
    assert_error(
        &f.load_err(),
        "redis.yml",
        Some("sentinelMode.masterName"),
        "required when redisMode is sentinel",
    );
    f.set("redis.yml", "masterName", "masterName: mymaster");
    assert_error(
        &f.load_err(),
        "redis.yml",
        Some("sentinelMode.sentinelsAddrs"),
        "at least one sentinel address",
    );
    f.set(
        "redis.yml",
        "sentinelsAddrs",
        "sentinelsAddrs: [ 10.0.0.1:26379, 10.0.0.2:26379 ]",
    )
    .set("redis.yml", "address", "address: []");
    let RedisMode::Sentinel(s) = f.load().unwrap().redis.mode else {
        panic!("not sentinel");
    };
    assert_eq!(s.master_name, "mymaster");
    assert_eq!(s.addresses, ["10.0.0.1:26379", "10.0.0.2:26379"]);
    // Behind Sentinel the failover fence is on by default: one replica
    // confirms every assignment.
    let cache = f.load().unwrap().service_config().transfer.cache;
    assert_eq!((cache.wait_replicas, cache.wait_timeout_ms), (1, 1000));
    // (The shipped file has the knob commented out; its neighbour's line
    // is taken for it.)
    f.set(
        "openim-msgtransfer.yml",
        "redisWaitTimeout",
        "redisWaitReplicas: 0",
    );
    assert_eq!(
        f.load()
            .unwrap()
            .service_config()
            .transfer
            .cache
            .wait_replicas,
        0
    );
    f.set(
        "openim-msgtransfer.yml",
        "redisWaitReplicas",
        "redisWaitReplicas: 17",
    );
    assert_error(
        &f.load_err(),
        "openim-msgtransfer.yml",
        Some("rustTransfer.redisWaitReplicas"),
        "must be 0 to 16",
    );
}

// ---------------------------------------------------------------- environment

#[test]
fn environment_overrides_win() {
    let vars = env(&[
        // Scalars: text, a number, a boolean, a duration.
        ("IMENV_MONGODB_DATABASE", "other_db"),
        ("IMENV_REDIS_PASSWORD", "0123"),
        ("IMENV_REDIS_DB", "8"),
        ("IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_ENABLE", "false"),
        ("IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_LINGER", "7ms"),
        ("IMENV_KAFKA_TLS_ENABLETLS", "true"),
        // Lists, comma-separated or YAML.
        ("IMENV_KAFKA_ADDRESS", "k1:9092, k2:9092"),
        (
            "IMENV_WEBHOOKS_AFTERMSGSAVEDB_DENIEDTYPES",
            "[1, '200-500']",
        ),
        // Variables of files this service does not read, and others.
        ("IMENV_DISCOVERY_ETCD_ADDRESS", "e:2379"),
        ("IMENV_OPENIM_API_API_PORTS", "10002"),
        ("PATH", "/bin"),
    ]);
    let c = config::load(&shipped(), 0, &vars).unwrap();
    assert_eq!(c.mongo.database, "other_db");
    assert_eq!(c.redis.password, "0123");
    assert_eq!(c.redis.db, 8);
    assert_eq!(c.prometheus_port, None);
    assert_eq!(c.tuning.linger, Duration::from_millis(7));
    assert!(c.kafka.tls.enabled);
    assert_eq!(c.kafka.addresses, ["k1:9092", "k2:9092"]);
    assert_eq!(
        c.webhooks.after_msg_save_db.denied_types,
        [1..=1, 200..=500]
    );

    // A boolean switched on, and a list of ports for index 1.
    let vars = env(&[
        ("IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_PORTS", "9100,9101"),
        ("IMENV_MONGODB_URI", ""),
        ("IMENV_MONGODB_ADDRESS", "m1:27017"),
    ]);
    let c = config::load(&shipped(), 1, &vars).unwrap();
    assert_eq!(c.prometheus_port, Some(9101));
    assert_eq!(
        c.mongo.uri,
        "mongodb://m1:27017/openim_v3?authSource=openim_v3&maxPoolSize=100"
    );

    // A variable can set a field the file does not have.
    let f = Folder::new();
    let text = f.read("openim-msgtransfer.yml");
    f.write(
        "openim-msgtransfer.yml",
        &text[..text.find("rustTransfer:").unwrap()],
    );
    let vars = env(&[("IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_MAXBATCH", "64")]);
    assert_eq!(config::load(&f.0, 0, &vars).unwrap().tuning.max_batch, 64);
}

#[test]
fn bad_environment_variables_are_refused() {
    let load = |vars: &[(&str, &str)]| {
        let e = config::load(&shipped(), 0, &env(vars)).unwrap_err();
        println!("{e}");
        e
    };
    // A variable that names no field.
    let e = load(&[("IMENV_KAFKA_ADRESS", "k:9092")]);
    assert_error(&e, "kafka.yml", None, "IMENV_KAFKA_ADRESS names no field");
    assert!(
        e.message.contains("did you mean IMENV_KAFKA_ADDRESS?"),
        "{e}"
    );
    // A section is not a field.
    let e = load(&[("IMENV_KAFKA_TLS", "true")]);
    assert_error(&e, "kafka.yml", None, "IMENV_KAFKA_TLS names no field");
    let e = load(&[("IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_LINGR", "5ms")]);
    assert_error(
        &e,
        "openim-msgtransfer.yml",
        None,
        "IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_LINGR names no field",
    );
    // A value of the wrong type names the field and the variable.
    let e = load(&[("IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_ENABLE", "x")]);
    assert_error(
        &e,
        "openim-msgtransfer.yml",
        Some("prometheus.enable"),
        "expected true or false, got \"x\" (from IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_ENABLE)",
    );
    let e = load(&[("IMENV_REDIS_DB", "eight")]);
    assert_error(&e, "redis.yml", Some("db"), "(from IMENV_REDIS_DB)");
    let e = load(&[("IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_DEDUPWINDOW", "1y")]);
    assert_error(
        &e,
        "openim-msgtransfer.yml",
        Some("rustTransfer.dedupWindow"),
        "unknown unit \"y\"",
    );
    let e = load(&[("IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_SESSIONTIMEOUT", "2h")]);
    assert_error(
        &e,
        "openim-msgtransfer.yml",
        Some("rustTransfer.sessionTimeout"),
        "must be at most 1h",
    );
    let e = load(&[("IMENV_REDIS_REDISMODE", "clustr")]);
    assert_error(
        &e,
        "redis.yml",
        Some("redisMode"),
        "(from IMENV_REDIS_REDISMODE)",
    );
    let e = load(&[("IMENV_KAFKA_ADDRESS", "")]);
    assert_error(
        &e,
        "kafka.yml",
        Some("address"),
        "at least one broker address",
    );
    let e = load(&[("IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_PORTS", "12020,x")]);
    assert_error(
        &e,
        "openim-msgtransfer.yml",
        Some("prometheus.ports[1]"),
        "(from IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_PORTS)",
    );
}

#[test]
fn kafka_tls_files_become_client_settings_and_unreadable_ones_are_refused() {
    use msgtransfer::backends::kafka::KafkaTlsFiles;
    use msgtransfer::daemon::kafka_settings;

    // Off: plaintext settings, whatever the other fields say.
    let f = Folder::new();
    let off = kafka_settings(&f.load().unwrap()).unwrap();
    assert_eq!(off.tls, None);

    // On, with files that exist: passed through as written.
    let f = Folder::new();
    let ca = f.0.join("ca.pem");
    let crt = f.0.join("client.pem");
    let key = f.0.join("client.key");
    for p in [&ca, &crt, &key] {
        std::fs::write(p, "-----BEGIN CERTIFICATE-----\n").unwrap();
    }
    let line = |k: &str, p: &std::path::Path| format!("{k}: {}", p.display());
    f.set("kafka.yml", "enableTLS", "enableTLS: true")
        .set("kafka.yml", "caCrt", &line("caCrt", &ca))
        .set("kafka.yml", "clientCrt", &line("clientCrt", &crt))
        .set("kafka.yml", "clientKey", &line("clientKey", &key))
        .set("kafka.yml", "clientKeyPwd", "clientKeyPwd: secret")
        .set(
            "kafka.yml",
            "insecureSkipVerify",
            "insecureSkipVerify: true",
        );
    let on = kafka_settings(&f.load().unwrap()).unwrap();
    let path = |p: &std::path::Path| Some(p.display().to_string());
    assert_eq!(
        on.tls,
        Some(KafkaTlsFiles {
            ca: path(&ca),
            cert: path(&crt),
            key: path(&key),
            key_password: Some("secret".into()),
            insecure_skip_verify: true,
        })
    );

    // A CA file that is not there: refused at start-up, field named.
    std::fs::remove_file(&ca).unwrap();
    let e = kafka_settings(&f.load().unwrap()).unwrap_err().to_string();
    assert!(e.contains("kafka.yml: tls.caCrt: cannot read"), "{e}");
}
