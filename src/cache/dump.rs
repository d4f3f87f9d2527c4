//! Reading back what the service keeps in Redis, for the checker.
//!
//! A [`RedisDump`] holds every `MSG_CACHE:*`, `MALLOC_SEQ:*` and
//! `SEQ_USER_READ:*` hash with its fields. The embedded model hands its
//! keyspace over directly; a real server is read with `SCAN` and
//! pipelined `HGETALL`s over any `redis::aio::ConnectionLike`, so the demo,
//! the integration suite and `audit` all feed the checker the same shape.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;

/// The key prefixes the checker reads.
pub const PREFIXES: [&str; 3] = ["MSG_CACHE:", "MALLOC_SEQ:", "SEQ_USER_READ:"];

/// Hash keys and their fields, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisDump {
    /// Key → field → value. A key holding something other than a hash is
    /// recorded with no fields (the checker counts it as misplaced).
    pub hashes: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl RedisDump {
    /// The keys starting with `prefix`, with the prefix cut off.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a [u8], &'a BTreeMap<Vec<u8>, Vec<u8>>)> + 'a {
        self.hashes
            .range(prefix.as_bytes().to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix.as_bytes()))
            .map(move |(k, v)| (&k[prefix.len()..], v))
    }

    /// Reads every key under [`PREFIXES`] from a live server. `SCAN` may
    /// return a key twice; the map keeps one copy. Keys written meanwhile
    /// may or may not be included, so read after the service has drained.
    pub async fn read<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<Self> {
        let mut dump = RedisDump::default();
        for prefix in PREFIXES {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(conn)
                    .await?;
                if !keys.is_empty() {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for k in &keys {
                        pipe.cmd("HGETALL").arg(k);
                    }
                    let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
                    for (k, reply) in keys.into_iter().zip(replies) {
                        // WRONGTYPE (not a hash) reads as no fields.
                        let fields = match reply {
                            redis::Value::ServerError(_) => BTreeMap::new(),
                            v => redis::from_redis_value(v)?,
                        };
                        dump.hashes.insert(k, fields);
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(dump)
    }
}
