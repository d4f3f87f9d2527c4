//! Private backend processes that a fault test may kill and restart without
//! disturbing the shared ones: a Redis server and a FerretDB, each on a
//! free port of 127.0.0.1. The binaries are the ones `ci/backends.sh up`
//! installs (`redis-server` on PATH, `.backends/bin/ferretdb-embedded`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use msgtransfer::ports::Clock;
use msgtransfer::ports::clock::SystemClock;

use super::daemon::free_port;

const HOW: &str = "run `ci/backends.sh up` first: it installs redis-server and builds \
                   .backends/bin/ferretdb-embedded";

/// Waits until something accepts TCP connections on `port`.
async fn until_listening(port: u16, what: &str) {
    let clock = SystemClock::new();
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        clock.sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} on port {port} did not start listening within 15 s");
}

/// A connection to the Redis node (or sentinel) at `address`.
pub async fn connect(address: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{address}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {address}: {e}"))
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `redis-server` without persistence: a restart starts empty.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start(tag: &str) -> RedisServer {
        RedisServer::start_with(tag, &[]).await
    }

    /// With more `redis-server` options, e.g. `--replicaof host port`.
    pub async fn start_with(tag: &str, extra: &[String]) -> RedisServer {
        let dir = std::env::temp_dir().join(super::unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = RedisServer {
            port: free_port(),
            dir,
            child: None,
            extra: extra.to_vec(),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server: {e}; {HOW}"));
        self.child = Some(child);
        until_listening(self.port, "redis-server").await;
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: everything in memory is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Our FerretDB (MongoDB wire protocol over SQLite files), with its data
/// in a directory of its own that survives restarts.
pub struct FerretServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl FerretServer {
    pub async fn start(tag: &str) -> FerretServer {
        let dir = std::env::temp_dir().join(super::unique(tag));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut s = FerretServer {
            port: free_port(),
            dir,
            child: None,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let bin = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.backends/bin/ferretdb-embedded"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ferretdb.log"))
            .unwrap();
        let child = Command::new(bin)
            .args(["-listen", &format!("127.0.0.1:{}", self.port)])
            .arg("-data-dir")
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}; {HOW}"));
        self.child = Some(child);
        until_listening(self.port, "ferretdb-embedded").await;
    }

    /// `mongodb://` URI.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, then a start on the same port and data directory.
    pub async fn restart_after_kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
        self.spawn().await;
    }
}

impl Drop for FerretServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Sentinel watching one primary as `mymaster`, quorum 1, that
/// declares it down after 1 s.
pub struct SentinelServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl SentinelServer {
    pub const MASTER: &'static str = "mymaster";

    pub async fn start(tag: &str, primary_port: u16) -> SentinelServer {
        let dir = std::env::temp_dir().join(super::unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {m} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {m} 1000\n\
                 sentinel failover-timeout {m} 5000\n\
                 sentinel parallel-syncs {m} 1\n",
                dir = dir.display(),
                m = Self::MASTER,
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("sentinel.log")).unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server --sentinel: {e}; {HOW}"));
        until_listening(port, "redis sentinel").await;
        SentinelServer {
            port,
            dir,
            child: Some(child),
        }
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn ask(&self, args: &[&str]) -> redis::Value {
        let mut conn = connect(&self.address()).await;
        let mut cmd = redis::cmd("SENTINEL");
        for a in args {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.unwrap()
    }

    /// The port of the node the sentinel calls the primary.
    pub async fn primary_port(&self) -> u16 {
        let (_, port): (String, String) =
            redis::from_redis_value(self.ask(&["get-master-addr-by-name", Self::MASTER]).await)
                .unwrap();
        port.parse().unwrap()
    }

    /// Waits (at most 30 s) until the sentinel knows `n` replicas of the
    /// primary.
    pub async fn until_replicas(&self, n: usize) {
        let clock = SystemClock::new();
        for _ in 0..300 {
            if let redis::Value::Array(rs) = self.ask(&["replicas", Self::MASTER]).await
                && rs.len() >= n
            {
                return;
            }
            clock.sleep(Duration::from_millis(100)).await;
        }
        panic!("the sentinel did not discover {n} replica(s) within 30 s");
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9(&mut c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `n` primaries (no replicas) on free ports, slots
/// spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(tag: &str, n: usize) -> RedisCluster {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let extra = [
                "--cluster-enabled".to_string(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                "2000".into(),
            ];
            nodes.push(RedisServer::start_with(tag, &extra).await);
        }
        let addrs: Vec<String> = nodes.iter().map(RedisServer::address).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("redis-cli --cluster create: {e}; {HOW}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let clock = SystemClock::new();
        for node in &nodes {
            let mut conn = connect(&node.address()).await;
            let mut ok = false;
            for _ in 0..300 {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    ok = true;
                    break;
                }
                clock.sleep(Duration::from_millis(100)).await;
            }
            assert!(ok, "cluster node {} not ok within 30 s", node.address());
        }
        RedisCluster { nodes }
    }

    /// The nodes' `host:port`s, comma-separated (OpenIM's `address` list).
    pub fn addresses(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Keys on each node (`DBSIZE`).
    pub async fn key_counts(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let mut conn = connect(&node.address()).await;
            out.push(redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap());
        }
        out
    }
}
