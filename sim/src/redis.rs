//! The simulated Redis: a primary with one asynchronously replicated
//! replica, served over turmoil TCP with RESP, executing commands and Lua
//! scripts with the embedded engine; and the service's connection to it,
//! the real `redis` client's `MultiplexedConnection` over a turmoil socket
//! with our own reconnect.
//!
//! Replication copies the primary's keyspace to the replica every
//! replication interval while the link is up, so the replica lags by up to
//! one interval. `WAIT n t` copies at once and answers 1 when the link is
//! up; when it is down it waits `t` and answers 0 — which is what the
//! allocator's fence relies on. A failover promotes the replica: the
//! primary's data becomes the replica's, writes not yet replicated are gone
//! (acknowledged ones included), and every connection to the old primary is
//! closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use msgtransfer::cache::RedisDump;
use msgtransfer::embedded::history;
use msgtransfer::embedded::redis::{Engine, Keyspace, Reply, encode_reply, parse_command};
use msgtransfer::ports::Clock;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisConnectionInfo, RedisFuture, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

use crate::common::{Faults, SimClock, sleep};

/// The server's port.
pub const PORT: u16 = 6379;

/// The primary, its replica and the replication link.
pub struct RedisHost {
    engine: Mutex<Engine>,
    replica: Mutex<Keyspace>,
    /// Bumped whenever the primary's data is replaced; connections opened
    /// before are closed at their next command.
    epoch: AtomicU64,
    link_up: AtomicBool,
    faults: Arc<Faults>,
}

impl RedisHost {
    /// An empty primary and replica; Lua's `math.random` seeded from `seed`.
    pub fn new(seed: u64, faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(Self {
            engine: Mutex::new(Engine::new(seed)),
            replica: Mutex::new(Keyspace::new()),
            epoch: AtomicU64::new(0),
            link_up: AtomicBool::new(true),
            faults,
        })
    }

    /// Copies the primary to the replica if the link is up.
    pub fn replicate(&self) -> bool {
        if !self.link_up.load(Ordering::SeqCst) {
            return false;
        }
        let ks = self.engine.lock().snapshot();
        *self.replica.lock() = ks;
        true
    }

    /// Cuts or restores the replication link.
    pub fn set_link(&self, up: bool) {
        self.link_up.store(up, Ordering::SeqCst);
    }

    /// Promotes the replica: the primary's unreplicated writes are lost.
    pub fn failover(&self) {
        let ks = self.replica.lock().clone();
        self.engine.lock().restore(ks);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Loses everything, primary and replica (both restarted without
    /// persistence): keys and loaded scripts.
    pub fn wipe(&self) {
        self.engine.lock().flush();
        *self.replica.lock() = Keyspace::new();
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// What the checker reads from Redis.
    pub fn dump(&self, now_ms: i64) -> RedisDump {
        history::dump(&mut self.engine.lock(), now_ms)
    }

    /// Serves RESP on [`PORT`] and replicates every `interval`, until the
    /// host is crashed.
    pub async fn serve(self: Arc<Self>, interval: Duration) -> std::io::Result<()> {
        let me = self.clone();
        tokio::task::spawn_local(async move {
            loop {
                sleep(interval).await;
                me.replicate();
            }
        });
        let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::task::spawn_local(self.clone().connection(stream));
        }
    }

    async fn wait(&self, args: &[Vec<u8>]) -> Reply {
        let timeout_ms: u64 = args
            .get(2)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if self.replicate() {
            return Reply::Int(1);
        }
        // Redis' WAIT 0 blocks forever; a bounded wait is enough here.
        sleep(Duration::from_millis(timeout_ms.max(1))).await;
        Reply::Int(i64::from(self.replicate()))
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut session = self.engine.lock().new_session();
        let clock = SimClock;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut out: Vec<u8> = Vec::with_capacity(4096);
        loop {
            let mut used = 0;
            loop {
                let parsed = match parse_command(&buf[used..]) {
                    Ok(p) => p,
                    Err(e) => {
                        encode_reply(&Reply::error(format!("ERR Protocol error: {e}")), &mut out);
                        let _ = stream.write_all(&out).await;
                        return;
                    }
                };
                let Some((args, n)) = parsed else { break };
                used += n;
                if args.is_empty() {
                    continue;
                }
                if self.epoch.load(Ordering::SeqCst) != epoch {
                    return;
                }
                let reply = if args[0].eq_ignore_ascii_case(b"WAIT") {
                    self.wait(&args).await
                } else {
                    let now = clock.now_ms();
                    self.engine.lock().execute_owned(&mut session, now, &args)
                };
                // A failover while WAIT was waiting: this is the old
                // primary's connection, and its writes may be gone. Redis
                // Sentinel has the old primary's clients disconnected, so
                // the answer never arrives.
                if self.epoch.load(Ordering::SeqCst) != epoch {
                    return;
                }
                if self.faults.roll("redis_lost_reply", |r| r.redis_lost_reply) {
                    return;
                }
                encode_reply(&reply, &mut out);
            }
            buf.drain(..used);
            if !out.is_empty() {
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// The service's Redis connection: one multiplexed connection, replaced by a
/// new one after any connection-level error. Clones share it.
#[derive(Clone)]
pub struct SimRedis {
    addr: String,
    timeout: Duration,
    conn: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl SimRedis {
    /// Connects lazily to `addr`; every command has `timeout` to answer.
    pub fn new(addr: String, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            conn: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr.as_str()))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let info = RedisConnectionInfo::default().set_skip_set_lib_name();
        let cfg = AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let (c, driver) = MultiplexedConnection::new_with_config(&info, stream, cfg).await?;
        tokio::spawn(driver);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn check<T>(&self, r: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &r
            && (e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error())
        {
            *self.conn.lock().await = None;
        }
        r
    }
}

impl ConnectionLike for SimRedis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = match self.get().await {
                Ok(mut c) => c.req_packed_command(cmd).await,
                Err(e) => Err(e),
            };
            self.check(r).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = match self.get().await {
                Ok(mut c) => c.req_packed_commands(cmd, offset, count).await,
                Err(e) => Err(e),
            };
            self.check(r).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
