//! `msgtransfer run` as a child process, on a stand of its own: this run's
//! topics, consumer groups, Redis database, Mongo database and metrics
//! ports, all named through `IMENV_*` overrides of the shipped `config/`
//! folder, exactly as an operator would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use msgtransfer::ops::{audit, load};
use msgtransfer::ports::Clock;
use msgtransfer::ports::clock::SystemClock;

/// The shipped OpenIM config folder.
pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP GET on 127.0.0.1: status code and body (0 and "" when
/// nothing answers).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    (status, body.to_string())
}

/// The value of an unlabelled counter or gauge in a `/metrics` body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Where the stand's Redis and Mongo are.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// `host:port` of Redis.
    pub redis_address: String,
    /// The Redis database the stand owns (emptied first).
    pub redis_db: u32,
    /// The MongoDB (FerretDB) URI.
    pub mongo_uri: String,
}

impl Endpoints {
    /// The shared backends from the environment, with Redis database `db`.
    pub fn shared(redis_db: u32) -> Self {
        Endpoints {
            redis_address: super::redis_address(),
            redis_db,
            mongo_uri: super::mongodb_uri(),
        }
    }
}

/// One run's own topics (4 partitions each), Redis database, Mongo
/// database and metrics ports, the config that names them, and a place for
/// `load`'s record.
pub struct Stand {
    pub run: String,
    pub db: mongodb::Database,
    pub env: BTreeMap<String, String>,
    pub cfg: msgtransfer::config::Config,
    /// `/metrics` port of instance `-i N`.
    pub metrics_ports: Vec<u16>,
    pub record_path: PathBuf,
    /// Where the daemons' logs go.
    pub log_dir: PathBuf,
}

impl Stand {
    /// A stand on the shared backends with Redis database `redis_db`.
    pub async fn new(tag: &str, redis_db: u32) -> Stand {
        Stand::on(tag, Endpoints::shared(redis_db), 1).await
    }

    /// A stand on `endpoints`, for `instances` daemons.
    pub async fn on(tag: &str, endpoints: Endpoints, instances: usize) -> Stand {
        let run = super::unique(tag);
        for t in ["toRedis", "toMongo", "toPush", "dlq"] {
            super::kafka_topic(&format!("{run}.{t}"), 4).await;
        }
        super::redis_flushed_at(&endpoints.redis_address, endpoints.redis_db).await;
        let client = mongodb::Client::with_uri_str(&endpoints.mongo_uri)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", endpoints.mongo_uri));
        let db = client.database(&run);
        let metrics_ports: Vec<u16> = (0..instances).map(|_| free_port()).collect();
        let ports = metrics_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let env: BTreeMap<String, String> = [
            ("IMENV_KAFKA_ADDRESS", super::kafka_brokers()),
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
            ("IMENV_OPENIM_MSGTRANSFER_PROMETHEUS_PORTS", ports),
            ("IMENV_REDIS_ADDRESS", endpoints.redis_address.clone()),
            ("IMENV_REDIS_DB", endpoints.redis_db.to_string()),
            ("IMENV_MONGODB_URI", endpoints.mongo_uri.clone()),
            ("IMENV_MONGODB_DATABASE", run.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let log_dir = std::env::temp_dir().join(format!("{run}.logs"));
        std::fs::create_dir_all(&log_dir).unwrap();
        Stand {
            record_path: std::env::temp_dir().join(format!("{run}.load.json")),
            cfg: config(&env),
            run,
            db,
            env,
            metrics_ports,
            log_dir,
        }
    }

    /// Adds (or replaces) an `IMENV_*` override for the daemons and for
    /// `load`/`audit`.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.insert(key.to_string(), value.to_string());
        self.cfg = config(&self.env);
        self
    }

    /// Starts `msgtransfer run -i index` and waits until its metrics port
    /// answers. Its log goes to `log_dir/daemon<index>.log` (appended, so
    /// restarts follow each other).
    pub async fn start(&self, index: usize) -> Daemon {
        let log_path = self.log_dir.join(format!("daemon{index}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_msgtransfer"))
            .args(["run", "-c", CONFIG, "-i", &index.to_string()])
            .envs(&self.env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting msgtransfer run");
        let port = self.metrics_ports[index];
        let clock = SystemClock::new();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            clock.sleep(Duration::from_millis(50)).await;
        }
        Daemon {
            child,
            port,
            log_path,
        }
    }

    /// Produces `messages` messages of seeded traffic into this stand's
    /// `toRedis` without waiting for them to be processed.
    pub async fn load(
        &self,
        messages: u64,
        conversations: u64,
        seed: u64,
        duplicate_rate: f64,
    ) -> load::LoadRecord {
        load::run(
            &self.cfg,
            &load::LoadArgs {
                messages,
                conversations,
                seed,
                rate: 0.0,
                duplicate_rate,
                record: self.record_path.clone(),
                progress: false,
                wait: None,
            },
        )
        .await
        .unwrap()
        .record
    }

    /// Audits against `record` every 500 ms until the report is clean (and
    /// every stored message persisted), for at most `limit`; returns the
    /// last report. Fails the test, with the report and the daemon logs'
    /// location, when it never gets clean.
    pub async fn audit_until_clean(
        &self,
        record: &load::LoadRecord,
        options: &audit::Options,
        limit: Duration,
    ) -> audit::AuditReport {
        let clock = SystemClock::new();
        let deadline = clock.now_ms() + limit.as_millis() as i64;
        loop {
            let report = audit::run_with(&self.cfg, Some(record), options, |_| {})
                .await
                .unwrap();
            if report.anomalies() == 0 && report.check.persisted == report.check.stored {
                return report;
            }
            if clock.now_ms() > deadline {
                panic!(
                    "not clean after {limit:?}:\n{}\ndaemon logs in {}",
                    audit::summary(&report),
                    self.log_dir.display()
                );
            }
            clock.sleep(Duration::from_millis(500)).await;
        }
    }

    /// Removes what the stand left behind: the record, the logs and the
    /// Mongo database.
    pub async fn clean_up(self) {
        let _ = std::fs::remove_file(&self.record_path);
        let _ = std::fs::remove_dir_all(&self.log_dir);
        let _ = self.db.drop().await;
    }
}

fn config(env: &BTreeMap<String, String>) -> msgtransfer::config::Config {
    msgtransfer::config::load(std::path::Path::new(CONFIG), 0, env).unwrap()
}

/// A running `msgtransfer run`. Dropping it kills the process, so a failed
/// test leaves no daemon behind.
pub struct Daemon {
    pub child: Child,
    /// Its `/metrics` port.
    pub port: u16,
    pub log_path: PathBuf,
}

impl Daemon {
    /// `/metrics`, or "" when it does not answer.
    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics").1
    }

    /// Sends SIGTERM and returns the exit status, failing the test if the
    /// process is still there 10 s later.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let clock = SystemClock::new();
        signal(&self.child, "-TERM");
        for _ in 0..100 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            clock.sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        panic!(
            "msgtransfer did not exit within 10 s of SIGTERM; log: {}",
            self.log_path.display()
        )
    }

    /// SIGKILL: no drain, no commit, no goodbye to the group.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}

/// Sends `sig` (as `kill` spells it) to `child`.
pub fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success(),
        "kill {sig} {pid}"
    );
}
