//! The daemon's Redis connection, for `redis.yml`'s `redisMode`:
//!
//! - `standalone`: redis-rs's `ConnectionManager` (one multiplexed
//!   connection, reconnected after a failure);
//! - `sentinel`: the primary that the sentinels name for `masterName`, asked
//!   for again after a connection failure or a `READONLY` reply (the node we
//!   talked to was demoted), so that a failover is followed;
//! - `cluster`: redis-rs's cluster connection, which routes every command
//!   to the node of its key's slot. OpenIM's key names put a conversation's
//!   `MALLOC_SEQ`, `MSG_CACHE` and `SEQ_USER_READ` keys in different slots,
//!   so in this mode the assign script touches only the allocator and its
//!   dedup table (one slot, by hash tag) and the cache entries and read seqs
//!   are written next, one routed command per key
//!   ([`crate::cache::CacheConfig::cache_in_script`]).
//!
//! Both carry the same commands and scripts (`crate::cache`). What a
//! failover may lose is fenced there: with replicas configured, every
//! assignment waits (`WAIT`) until a replica has it before its seqs are
//! used, so a promoted replica never hands out a seq that was already used.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// A connection in one of the supported modes.
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Standalone(ConnectionManager),
    /// The primary named by Sentinel.
    Sentinel(SentinelConn),
    /// A Redis Cluster.
    Cluster(ClusterConn),
}

/// A Redis Cluster connection, and what is needed to reach each node by
/// itself (to read every node's keys back).
#[derive(Clone)]
pub struct ClusterConn {
    conn: redis::cluster_async::ClusterConnection,
    node: redis::RedisConnectionInfo,
}

impl ClusterConn {
    /// Connects to the cluster that `nodes` (`host:port`) belong to.
    pub async fn connect(
        nodes: &[String],
        node: redis::RedisConnectionInfo,
        response_timeout: std::time::Duration,
    ) -> RedisResult<ClusterConn> {
        let mut b = redis::cluster::ClusterClient::builder(
            nodes
                .iter()
                .map(|a| format!("redis://{a}"))
                .collect::<Vec<_>>(),
        )
        .response_timeout(response_timeout);
        if let Some(u) = node.username() {
            b = b.username(u);
        }
        if let Some(p) = node.password() {
            b = b.password(p);
        }
        let conn = b.build()?.get_async_connection().await?;
        Ok(ClusterConn { conn, node })
    }

    /// Every key the checker reads, from every primary (`SCAN` only walks
    /// the node it is sent to).
    pub async fn dump(&mut self) -> RedisResult<crate::cache::RedisDump> {
        let slots: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.conn)
            .await?;
        let mut primaries: Vec<(String, u16)> = Vec::new();
        for range in slots {
            // [start, end, [host, port, id, ...], replicas...]
            let Value::Array(parts) = range else { continue };
            let Some(Value::Array(primary)) = parts.get(2) else {
                continue;
            };
            let host: String = redis::from_redis_value(primary[0].clone())?;
            let port: u16 = redis::from_redis_value(primary[1].clone())?;
            if !primaries.contains(&(host.clone(), port)) {
                primaries.push((host, port));
            }
        }
        let mut all = crate::cache::RedisDump::default();
        for (host, port) in primaries {
            let info = redis::IntoConnectionInfo::into_connection_info(
                redis::ConnectionAddr::Tcp(host, port),
            )?
            .set_redis_settings(self.node.clone());
            let mut c = redis::Client::open(info)?
                .get_multiplexed_async_connection()
                .await?;
            let part = crate::cache::RedisDump::read(&mut c).await?;
            all.hashes.extend(part.hashes);
        }
        Ok(all)
    }
}

impl RedisConn {
    /// Every key the checker reads (see [`crate::cache::RedisDump`]), from
    /// every node in cluster mode.
    pub async fn dump(&mut self) -> RedisResult<crate::cache::RedisDump> {
        match self {
            RedisConn::Cluster(c) => c.dump().await,
            other => crate::cache::RedisDump::read(other).await,
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
            RedisConn::Cluster(c) => c.conn.get_db(),
        }
    }
}

/// A multiplexed connection to the current primary of a Sentinel-monitored
/// set. Clones share the connection.
#[derive(Clone)]
pub struct SentinelConn {
    inner: Arc<Inner>,
    db: i64,
}

struct Inner {
    /// How long a reply may take (a `WAIT` takes up to its own timeout).
    response_timeout: std::time::Duration,
    /// Asks the sentinels (one question at a time).
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection in use, with a number that tells connections apart.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    next_id: AtomicU64,
}

impl SentinelConn {
    /// Asks `sentinels` (`host:port`) for the primary of `master` and
    /// connects to it with `redis` (database, user, password); replies may
    /// take up to `response_timeout`.
    pub async fn connect(
        sentinels: &[String],
        master: &str,
        redis: redis::RedisConnectionInfo,
        response_timeout: std::time::Duration,
    ) -> RedisResult<SentinelConn> {
        let nodes: Vec<String> = sentinels.iter().map(|a| format!("redis://{a}")).collect();
        let db = redis.db();
        let client = SentinelClient::build(
            nodes,
            master.to_string(),
            Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(redis)),
            SentinelServerType::Master,
        )?;
        let conn = SentinelConn {
            inner: Arc::new(Inner {
                response_timeout,
                client: tokio::sync::Mutex::new(client),
                current: Mutex::new(None),
                next_id: AtomicU64::new(0),
            }),
            db,
        };
        conn.connection().await?;
        Ok(conn)
    }

    /// The connection in use, or a new one to the primary the sentinels
    /// name now.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.inner.current.lock().clone() {
            return Ok(c);
        }
        let mut client = self.inner.client.lock().await;
        if let Some(c) = self.inner.current.lock().clone() {
            return Ok(c);
        }
        let mut conn = client.get_async_connection().await?;
        conn.set_response_timeout(self.inner.response_timeout);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            connection = id,
            "connected to the Redis primary named by Sentinel"
        );
        *self.inner.current.lock() = Some((id, conn.clone()));
        Ok((id, conn))
    }

    /// After `e` on connection `id`: drop that connection if the error says
    /// the primary is gone or is no longer the primary.
    fn after_error(&self, id: u64, e: &RedisError) {
        let primary_lost = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if primary_lost {
            let mut current = self.inner.current.lock();
            if current.as_ref().is_some_and(|(c, _)| *c == id) {
                tracing::warn!(error = %e, "lost the Redis primary; asking Sentinel again");
                *current = None;
            }
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (id, mut conn) = self.connection().await?;
            let reply = conn.req_packed_command(cmd).await;
            if let Err(e) = &reply {
                self.after_error(id, e);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (id, mut conn) = self.connection().await?;
            let reply = conn.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &reply {
                self.after_error(id, e);
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}
