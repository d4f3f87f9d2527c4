//! A `redis` crate connection backed by the in-process engine.
//!
//! [`EmbeddedRedis`] implements [`redis::aio::ConnectionLike`], so the same
//! `redis::cmd(..).query_async`, `redis::pipe()` and
//! `redis::Script::invoke_async` code that talks to a real server runs
//! against an [`Engine`] in memory. Arguments are taken straight from the
//! [`Cmd`] (no RESP encode/parse on the hot path) and replies are turned
//! into [`redis::Value`] the way the crate's own parser would produce them.
//!
//! It assumes time comes from the injected [`Clock`](crate::ports::clock::Clock)
//! and that the engine is only held for one command or one pipeline. A
//! connection that finds the engine held leaves its request with the holder
//! and awaits the reply instead of parking its thread ([`SharedEngine`]).
//! A pipeline's commands run back to back in a single turn on the engine,
//! so in this model even a non-atomic pipeline is atomic: a strictly
//! stronger guarantee than a real server gives, which callers must not rely
//! on. It must never hold the lock across an `.await`.
//!
//! An optional [`FaultHook`] injects connection failures before or after a
//! command runs, to test callers against lost requests and lost replies.

use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind};

use super::engine::{ClientIds, Engine, Reply, Session};
use super::resp::{encode_reply, parse_command};
use super::shared::SharedEngine;
use crate::ports::clock::SharedClock;

/// Decides, per command (given its upper-cased name), whether to inject a
/// connection failure. Pipelines consult it for every command they send,
/// in order and up to the first fault, including the `MULTI` and `EXEC`
/// that wrap an atomic pipeline. It is never called with the engine locked.
pub type FaultHook = Arc<dyn Fn(&[u8]) -> Option<FaultKind> + Send + Sync>;

/// An injected connection failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The connection drops before the command reaches the server: it does
    /// not run, and neither does anything after it in the same pipeline.
    ErrorBeforeExecute,
    /// The command runs, then the connection drops before the reply
    /// arrives: the caller sees an I/O error for a write that happened.
    ErrorAfterExecute,
}

/// A fresh engine for connections to share.
pub fn shared_engine(seed: u64) -> Arc<SharedEngine> {
    Arc::new(SharedEngine::new(Engine::new(seed)))
}

/// One client connection to the embedded engine.
///
/// Cloning opens another connection: the clone shares the engine, the clock
/// and the fault hook but gets its own [`Session`] (client id, MULTI state).
pub struct EmbeddedRedis {
    engine: Arc<SharedEngine>,
    client_ids: ClientIds,
    clock: SharedClock,
    session: Session,
    fault: Option<FaultHook>,
}

impl std::fmt::Debug for EmbeddedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRedis")
            .field("client_id", &self.session.id())
            .field("fault_hook", &self.fault.is_some())
            .finish_non_exhaustive()
    }
}

impl Clone for EmbeddedRedis {
    fn clone(&self) -> Self {
        // Not through the engine: clones are made per request in the hot
        // path, and the engine's lock may be held by a running script.
        let session = self.client_ids.new_session();
        EmbeddedRedis {
            engine: Arc::clone(&self.engine),
            client_ids: self.client_ids.clone(),
            clock: Arc::clone(&self.clock),
            session,
            fault: self.fault.clone(),
        }
    }
}

/// The I/O error a dropped connection produces; `is_connection_dropped()`
/// is true for it, as for a real reset socket.
fn dropped(detail: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        format!("embedded redis: injected connection drop ({detail})"),
    ))
}

/// Converts an engine reply into the `redis::Value` the crate's parser
/// would produce from the same bytes on the wire.
fn to_value(reply: Reply) -> redis::Value {
    use redis::Value;
    match reply {
        Reply::Status(s) if s == "OK" => Value::Okay,
        Reply::Status(s) => Value::SimpleString(s),
        Reply::Int(i) => Value::Int(i),
        Reply::Bulk(b) => Value::BulkString(b),
        Reply::Nil | Reply::NilArray => Value::Nil,
        Reply::Array(items) => Value::Array(items.into_iter().map(to_value).collect()),
        err @ Reply::Error(_) => {
            // `ServerError` cannot be built outside the crate; its parser
            // is the one route that yields the exact kind (NOSCRIPT,
            // EXECABORT, ...) the crate's retry logic matches on. The
            // encoder guarantees a single well-formed error line, which the
            // parser always accepts; Nil is only a defensive fallback.
            let mut wire = Vec::new();
            encode_reply(&err, &mut wire);
            redis::parse_redis_value(&wire).unwrap_or(Value::Nil)
        }
    }
}

/// Upper-cased command name for the fault hook.
fn command_name(args: &[&[u8]]) -> Vec<u8> {
    args.first()
        .map(|n| n.to_ascii_uppercase())
        .unwrap_or_default()
}

/// Calls `f` with the command's arguments as slices. Cursor arguments
/// (used by the crate's SCAN iterators) have no slice form, so such
/// commands take the packed-and-parsed route instead (off the hot path).
fn with_args<R>(cmd: &Cmd, f: impl FnOnce(&[&[u8]]) -> R) -> R {
    let mut args: Vec<&[u8]> = Vec::with_capacity(cmd.args_iter().len());
    for arg in cmd.args_iter() {
        match arg {
            redis::Arg::Simple(a) => args.push(a),
            // Cursor arguments, and any kind a later crate version adds.
            _ => {
                let packed = cmd.get_packed_command();
                let owned = match parse_command(&packed) {
                    Ok(Some((owned, _))) => owned,
                    // The crate's own encoding is always one whole request.
                    _ => Vec::new(),
                };
                let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
                return f(&refs);
            }
        }
    }
    f(&args)
}

/// A command's arguments copied into one buffer, for running it later.
/// The job that runs it hands it back with the reply, so it is freed by the
/// thread that allocated it (a free from another thread costs the
/// allocator more).
struct OwnedArgs {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl OwnedArgs {
    fn copy(args: &[&[u8]]) -> Self {
        let mut bytes = Vec::with_capacity(args.iter().map(|a| a.len()).sum());
        let mut ends = Vec::with_capacity(args.len());
        for a in args {
            bytes.extend_from_slice(a);
            ends.push(bytes.len());
        }
        OwnedArgs { bytes, ends }
    }

    /// The arguments, as the engine takes them.
    fn slices(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let arg = &self.bytes[start..end];
                start = end;
                arg
            })
            .collect()
    }
}

impl EmbeddedRedis {
    /// A new connection to `engine`, reading time from `clock`.
    pub fn new(engine: Arc<SharedEngine>, clock: SharedClock) -> Self {
        let client_ids = engine.lock().client_ids();
        let session = client_ids.new_session();
        EmbeddedRedis {
            engine,
            client_ids,
            clock,
            session,
            fault: None,
        }
    }

    /// Installs a fault-injection hook.
    pub fn with_fault_hook(mut self, hook: FaultHook) -> Self {
        self.fault = Some(hook);
        self
    }

    /// The shared engine, for inspection by tests and checkers.
    pub fn engine(&self) -> &Arc<SharedEngine> {
        &self.engine
    }

    /// Runs one command directly and returns the engine's reply, bypassing
    /// the `redis` crate types (and the fault hook).
    pub fn execute(&mut self, args: &[&[u8]]) -> Reply {
        let now = self.clock.now_ms();
        self.engine.lock().execute(&mut self.session, now, args)
    }

    /// Runs `work` on the engine with this connection's session, from a
    /// turn of its own if the engine is free. If another connection holds
    /// it, `work` goes to the lobby with the session and this awaits its
    /// result, leaving the thread to other tasks. Parking on the lock
    /// instead left one of two workers idle ~5 s per 1M-message demo;
    /// yielding in a loop spun ~16 million times for no throughput.
    /// `None` if the job was dropped unrun, which only a dropped engine
    /// could do.
    async fn on_engine<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Engine, &mut Session, i64) -> R + Send + 'static,
    ) -> Option<R> {
        if let Some(mut engine) = self.engine.try_lock() {
            let now = self.clock.now_ms();
            return Some(work(&mut engine, &mut self.session, now));
        }
        // Should this future be dropped while the job waits, the job still
        // runs (as a sent command does) and the connection goes on with a
        // fresh session under the same id, as after a reconnect.
        let placeholder = Session::new(self.session.id());
        let mut session = std::mem::replace(&mut self.session, placeholder);
        let clock = Arc::clone(&self.clock);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.submit(Box::new(move |engine| {
            let out = work(engine, &mut session, clock.now_ms());
            let _ = tx.send((out, session));
        }));
        let (out, session) = rx.await.ok()?;
        self.session = session;
        Some(out)
    }

    async fn run_command(&mut self, cmd: &Cmd) -> RedisResult<redis::Value> {
        // Ask the fault hook first, outside the engine lock (a hook may
        // inspect the engine).
        let kind = match &self.fault {
            Some(hook) => with_args(cmd, |args| hook(&command_name(args))),
            None => None,
        };
        if kind == Some(FaultKind::ErrorBeforeExecute) {
            self.session.reset();
            return Err(dropped("before execute"));
        }
        // The common case runs at once, borrowing the arguments in place.
        let at_once = self.engine.try_lock().map(|mut engine| {
            let now = self.clock.now_ms();
            let session = &mut self.session;
            with_args(cmd, |args| engine.execute(session, now, args))
        });
        let reply = match at_once {
            Some(reply) => reply,
            None => {
                let owned = with_args(cmd, OwnedArgs::copy);
                let (reply, owned) = self
                    .on_engine(move |engine, session, now| {
                        (engine.execute(session, now, &owned.slices()), owned)
                    })
                    .await
                    .ok_or_else(|| dropped("engine went away"))?;
                drop(owned);
                reply
            }
        };
        if kind == Some(FaultKind::ErrorAfterExecute) {
            // A dropped connection takes its server-side state with it.
            self.session.reset();
            return Err(dropped("after execute"));
        }
        Ok(to_value(reply))
    }

    async fn run_pipeline(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<redis::Value>> {
        let atomic = pipeline.is_transaction();
        let multi = redis::cmd("MULTI");
        let exec = redis::cmd("EXEC");
        let wrapped = || {
            atomic
                .then_some(&multi)
                .into_iter()
                .chain(pipeline.cmd_iter())
                .chain(atomic.then_some(&exec))
        };
        // Ask the hook first, outside the engine lock (so a hook may inspect
        // the engine): up to which command does the connection survive?
        let mut runs = usize::MAX;
        let mut failure = None;
        if let Some(hook) = &self.fault {
            for (i, cmd) in wrapped().enumerate() {
                let kind = with_args(cmd, |args| hook(&command_name(args)));
                match kind {
                    Some(FaultKind::ErrorBeforeExecute) => {
                        (runs, failure) = (i, Some(dropped("before execute")));
                        break;
                    }
                    Some(FaultKind::ErrorAfterExecute) => {
                        (runs, failure) = (i + 1, Some(dropped("after execute")));
                        break;
                    }
                    None => {}
                }
            }
        }
        let mut replies: Vec<Reply> = Vec::with_capacity(pipeline.len() + 2);
        let at_once = self.engine.try_lock().map(|mut engine| {
            let now = self.clock.now_ms();
            let session = &mut self.session;
            for cmd in wrapped().take(runs) {
                replies.push(with_args(cmd, |args| engine.execute(session, now, args)));
            }
        });
        match at_once {
            Some(()) => {}
            None => {
                let owned: Vec<OwnedArgs> = wrapped()
                    .take(runs)
                    .map(|cmd| with_args(cmd, OwnedArgs::copy))
                    .collect();
                let returned: Vec<OwnedArgs>;
                (replies, returned) = self
                    .on_engine(move |engine, session, now| {
                        replies.extend(
                            owned
                                .iter()
                                .map(|args| engine.execute(session, now, &args.slices())),
                        );
                        (replies, owned)
                    })
                    .await
                    .ok_or_else(|| dropped("engine went away"))?;
                drop(returned);
            }
        }
        if let Some(e) = failure {
            self.session.reset();
            return Err(e);
        }
        if atomic {
            // Like the crate's multiplexed connection: a command refused
            // while queueing fails the whole transaction. The crate's own
            // "transaction aborted" error cannot be built outside it, so
            // this carries the same kind (EXECABORT) and the reasons.
            let refused: Vec<String> = replies
                .iter()
                .enumerate()
                .take(offset)
                .skip(1)
                .filter_map(|(i, r)| match r {
                    Reply::Error(m) => Some(format!("command {}: {m}", i - 1)),
                    _ => None,
                })
                .collect();
            if !refused.is_empty() {
                return Err(RedisError::from((
                    ErrorKind::Server(ServerErrorKind::ExecAbort),
                    "Transaction aborted",
                    refused.join("; "),
                )));
            }
        }
        Ok(replies
            .into_iter()
            .skip(offset)
            .take(count)
            .map(to_value)
            .collect())
    }
}

impl ConnectionLike for EmbeddedRedis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        // Run when polled, like a real connection that sends on first poll.
        Box::pin(self.run_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(self.run_pipeline(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use redis::{AsyncCommands, RedisResult, Script, Value};

    use super::*;
    use crate::ports::clock::ManualClock;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn connect() -> (EmbeddedRedis, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let con = EmbeddedRedis::new(shared_engine(3), clock.clone());
        (con, clock)
    }

    #[test]
    fn commands_through_the_redis_crate() {
        block_on(async {
            let (mut con, _) = connect();
            let ok: String = redis::cmd("SET")
                .arg("k")
                .arg("v")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(ok, "OK");
            let v: String = redis::cmd("GET")
                .arg("k")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(v, "v");
            let missing: Option<String> = con.get("nope").await.unwrap();
            assert_eq!(missing, None);
            let _: () = con.hset_multiple("h", &[("a", 1), ("b", 2)]).await.unwrap();
            let n: i64 = redis::cmd("HSET")
                .arg("h")
                .arg("c")
                .arg(3)
                .arg("a")
                .arg(9)
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(n, 1);
            let a: i64 = con.hget("h", "a").await.unwrap();
            assert_eq!(a, 9);
            let vals: Vec<Option<i64>> = redis::cmd("HMGET")
                .arg("h")
                .arg("a")
                .arg("zz")
                .arg("c")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(vals, vec![Some(9), None, Some(3)]);
            let set: bool = con.expire("h", 30).await.unwrap();
            assert!(set);
            let ttl: i64 = con.ttl("h").await.unwrap();
            assert_eq!(ttl, 30);
            let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
            assert_eq!(pong, "PONG");
            let err = redis::cmd("GET")
                .arg("h")
                .query_async::<Value>(&mut con)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Some("WRONGTYPE"));
            let err = redis::cmd("NOPE")
                .query_async::<Value>(&mut con)
                .await
                .unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Server(ServerErrorKind::ResponseError)
            );
            assert!(err.to_string().contains("unknown command"), "{err}");
            // The set-up commands a real client sends are accepted.
            let _: () = redis::cmd("CLIENT")
                .arg("SETINFO")
                .arg("LIB-NAME")
                .arg("redis-rs")
                .query_async(&mut con)
                .await
                .unwrap();
        });
    }

    #[test]
    fn expiry_follows_the_injected_clock() {
        block_on(async {
            let (mut con, clock) = connect();
            let _: () = con.set_ex("session", "x", 10).await.unwrap();
            let _: () = con.hset("h", "f", "v").await.unwrap();
            let _: bool = con.pexpire("h", 2_500).await.unwrap();
            clock.advance(Duration::from_millis(2_500));
            let still: Option<String> = con.hget("h", "f").await.unwrap();
            assert_eq!(still.as_deref(), Some("v"), "alive at exactly the deadline");
            clock.advance(Duration::from_millis(1));
            let gone: Option<String> = con.hget("h", "f").await.unwrap();
            assert_eq!(gone, None);
            let ttl: i64 = con.ttl("session").await.unwrap();
            assert_eq!(ttl, 7);
            clock.advance(Duration::from_secs(8));
            let ttl: i64 = con.ttl("session").await.unwrap();
            assert_eq!(ttl, -2);
        });
    }

    #[test]
    fn pipelines_plain_and_atomic() {
        block_on(async {
            let (mut con, _) = connect();
            let (a, b, c): (String, i64, Option<String>) = redis::pipe()
                .cmd("SET")
                .arg("a")
                .arg("1")
                .ignore()
                .cmd("INCR")
                .arg("a")
                .ignore()
                .cmd("GET")
                .arg("a")
                .cmd("INCRBY")
                .arg("a")
                .arg(5)
                .cmd("GET")
                .arg("missing")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!((a.as_str(), b, c), ("2", 7, None));

            let (x, y): (i64, i64) = redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg("ctr")
                .cmd("INCR")
                .arg("ctr")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!((x, y), (1, 2));
            assert!(!con.session.in_multi());

            // A runtime error inside EXEC is that command's error.
            let err = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg("s")
                .arg("x")
                .cmd("INCR")
                .arg("s")
                .query_async::<Value>(&mut con)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("not an integer"), "{err}");
            let s: String = con.get("s").await.unwrap();
            assert_eq!(s, "x", "the SET before the failing command ran");

            // A command refused while queueing aborts the whole transaction.
            let err = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg("t")
                .arg("1")
                .cmd("GET")
                .query_async::<Value>(&mut con)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Server(ServerErrorKind::ExecAbort));
            let exists: bool = con.exists("t").await.unwrap();
            assert!(!exists);

            // Empty atomic pipeline.
            let v: Value = redis::pipe().atomic().query_async(&mut con).await.unwrap();
            assert_eq!(v, Value::Array(vec![]));
        });
    }

    const ALLOC: &str = r#"
        local curr = tonumber(redis.call('HGET', KEYS[1], 'CURR') or '0')
        local last = tonumber(redis.call('HGET', KEYS[1], 'LAST') or '0')
        local n = tonumber(ARGV[1])
        local first = curr + 1
        curr = curr + n
        if curr > last then
            last = curr + 1000
            redis.call('HSET', KEYS[1], 'CURR', curr, 'LAST', last)
        else
            redis.call('HSET', KEYS[1], 'CURR', curr)
        end
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        redis.call('INCR', 'runs')
        return {first, curr}
    "#;

    #[test]
    fn script_invoke_falls_back_from_noscript() {
        block_on(async {
            let (mut con, _) = connect();
            let script = Script::new(ALLOC);
            let (first, last): (i64, i64) = script
                .key("seq:c")
                .arg(10)
                .arg(60_000)
                .invoke_async(&mut con)
                .await
                .unwrap();
            assert_eq!((first, last), (1, 10));
            let runs: i64 = con.get("runs").await.unwrap();
            assert_eq!(runs, 1, "the NOSCRIPT attempt did not run the script");
            let (first, last): (i64, i64) = script
                .key("seq:c")
                .arg(5)
                .arg(60_000)
                .invoke_async(&mut con)
                .await
                .unwrap();
            assert_eq!((first, last), (11, 15));
            let runs: i64 = con.get("runs").await.unwrap();
            assert_eq!(runs, 2);
            let pttl: i64 = con.pttl("seq:c").await.unwrap();
            assert_eq!(pttl, 60_000);
            let curr = con.engine().lock().get_hash_field(0, b"seq:c", b"CURR");
            assert_eq!(curr, Some(b"15".to_vec()));
            // A flushed cache (server restart) is recovered the same way.
            con.engine().lock().flush_scripts();
            let (first, _): (i64, i64) = script
                .key("seq:c")
                .arg(1)
                .arg(60_000)
                .invoke_async(&mut con)
                .await
                .unwrap();
            assert_eq!(first, 16);
        });
    }

    #[test]
    fn seq_allocation_is_atomic_under_concurrent_clients() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let (con, _) = connect();
        let ranges = rt.block_on(async move {
            let mut tasks = Vec::new();
            for t in 0..4i64 {
                let mut con = con.clone();
                tasks.push(tokio::spawn(async move {
                    let script = Script::new(ALLOC);
                    let mut got = Vec::new();
                    for i in 0..200i64 {
                        let size = (i + t) % 7 + 1;
                        let (first, last): (i64, i64) = script
                            .key("seq:shared")
                            .arg(size)
                            .arg(60_000)
                            .invoke_async(&mut con)
                            .await
                            .unwrap();
                        assert_eq!(last - first + 1, size);
                        got.push((first, last));
                    }
                    got
                }));
            }
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        });
        let mut ranges = ranges;
        ranges.sort_unstable();
        let mut expect_next = 1;
        for (first, last) in &ranges {
            assert_eq!(*first, expect_next, "ranges overlap or leave a gap");
            expect_next = last + 1;
        }
        assert_eq!(ranges.len(), 800);
    }

    #[test]
    fn script_errors_become_redis_errors() {
        block_on(async {
            let (mut con, _) = connect();
            let _: () = con.set("str", "x").await.unwrap();
            let r: RedisResult<Value> = Script::new("return redis.call('HGET', KEYS[1], 'f')")
                .key("str")
                .invoke_async(&mut con)
                .await;
            let err = r.unwrap_err();
            assert_eq!(err.code(), Some("WRONGTYPE"));
            assert!(err.to_string().contains("on @user_script:1"), "{err}");
            let r: RedisResult<Value> = Script::new("error('kaput')").invoke_async(&mut con).await;
            let err = r.unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Server(ServerErrorKind::ResponseError)
            );
            assert!(err.to_string().contains("kaput"), "{err}");
            let r: RedisResult<Value> =
                Script::new("return redis.error_reply('OUTDATED seq moved')")
                    .invoke_async(&mut con)
                    .await;
            let err = r.unwrap_err();
            assert_eq!(err.code(), Some("OUTDATED"));
            assert_eq!(err.detail(), Some("seq moved"));
            let st: String = Script::new("return redis.status_reply('DONE')")
                .invoke_async(&mut con)
                .await
                .unwrap();
            assert_eq!(st, "DONE");
        });
    }

    #[test]
    fn scan_iterator_sees_every_key_once() {
        block_on(async {
            let (mut con, _) = connect();
            for i in 0..500 {
                let _: () = con.set(format!("m:{i}"), i).await.unwrap();
            }
            let _: () = con.set("other", 1).await.unwrap();
            let mut keys: Vec<String> = {
                let mut it: redis::AsyncIter<String> = con.scan_match("m:*").await.unwrap();
                let mut out = Vec::new();
                while let Some(k) = it.next_item().await {
                    out.push(k.unwrap());
                }
                out
            };
            keys.sort();
            let mut want: Vec<String> = (0..500).map(|i| format!("m:{i}")).collect();
            want.sort();
            assert_eq!(keys, want);
        });
    }

    #[test]
    fn faults_before_and_after_execution() {
        block_on(async {
            let (con, _) = connect();
            let calls = Arc::new(AtomicUsize::new(0));
            let seen = Arc::clone(&calls);
            let hook: FaultHook = Arc::new(move |name: &[u8]| {
                seen.fetch_add(1, Ordering::SeqCst);
                match name {
                    b"INCR" => Some(FaultKind::ErrorBeforeExecute),
                    b"SET" => Some(FaultKind::ErrorAfterExecute),
                    _ => None,
                }
            });
            let mut con = con.with_fault_hook(hook);
            let err = redis::cmd("INCR")
                .arg("n")
                .query_async::<i64>(&mut con)
                .await
                .unwrap_err();
            assert!(err.is_io_error() && err.is_connection_dropped(), "{err:?}");
            let n: Option<i64> = con.get("n").await.unwrap();
            assert_eq!(n, None, "not executed");
            let err = redis::cmd("SET")
                .arg("k")
                .arg("v")
                .query_async::<()>(&mut con)
                .await
                .unwrap_err();
            assert!(err.is_connection_dropped());
            let v: Option<String> = con.get("k").await.unwrap();
            assert_eq!(
                v.as_deref(),
                Some("v"),
                "executed although the caller saw an error"
            );

            // In a pipeline, commands before the fault ran; the rest did not.
            let r: RedisResult<Value> = redis::pipe()
                .cmd("HSET")
                .arg("h")
                .arg("a")
                .arg("1")
                .cmd("INCR")
                .arg("n")
                .cmd("HSET")
                .arg("h")
                .arg("b")
                .arg("2")
                .query_async(&mut con)
                .await;
            assert!(r.unwrap_err().is_connection_dropped());
            let h: Vec<(String, String)> = con.hgetall("h").await.unwrap();
            assert_eq!(h, vec![("a".to_owned(), "1".to_owned())]);

            // A fault inside MULTI drops the transaction entirely.
            let r: RedisResult<Value> = redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg("h2")
                .arg("a")
                .arg("1")
                .cmd("INCR")
                .arg("n")
                .query_async(&mut con)
                .await;
            assert!(r.is_err());
            assert!(!con.session.in_multi());
            let exists: bool = con.exists("h2").await.unwrap();
            assert!(!exists);
            assert!(calls.load(Ordering::SeqCst) > 5);
        });
    }

    #[test]
    fn exec_fault_after_execute_is_an_unknown_outcome() {
        block_on(async {
            let (con, _) = connect();
            let hook: FaultHook =
                Arc::new(|name: &[u8]| (name == b"EXEC").then_some(FaultKind::ErrorAfterExecute));
            let mut con = con.with_fault_hook(hook);
            let r: RedisResult<Value> = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg("a")
                .arg("1")
                .cmd("SET")
                .arg("b")
                .arg("2")
                .query_async(&mut con)
                .await;
            assert!(r.unwrap_err().is_connection_dropped());
            let both: Vec<Option<String>> = con.mget(&["a", "b"]).await.unwrap();
            assert_eq!(both, vec![Some("1".into()), Some("2".into())]);
        });
    }

    #[test]
    fn clones_are_separate_connections() {
        let (mut a, _) = connect();
        let mut b = a.clone();
        assert_ne!(a.session.id(), b.session.id());
        assert_eq!(a.execute(&[b"MULTI"]), Reply::ok());
        assert_eq!(
            a.execute(&[b"SET", b"k", b"1"]),
            Reply::Status("QUEUED".into())
        );
        // b is not inside a's transaction and does not see its queued write.
        assert_eq!(b.execute(&[b"GET", b"k"]), Reply::Nil);
        assert_eq!(a.execute(&[b"EXEC"]), Reply::Array(vec![Reply::ok()]));
        assert_eq!(b.execute(&[b"GET", b"k"]), Reply::Bulk(b"1".to_vec()));
    }

    #[test]
    fn requests_made_while_the_engine_is_held_run_once_it_is_let_go() {
        // The test thread holds the engine while the connection sends a
        // command, then an atomic pipeline: each goes to the lobby, is
        // answered when the guard drops, and the connection keeps its
        // session (client id, name) across the hand-over.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let (mut con, _) = connect();
        let engine = Arc::clone(con.engine());
        let id: i64 = block_on(redis::cmd("CLIENT").arg("ID").query_async(&mut con)).unwrap();
        let (go, mut next) = tokio::sync::mpsc::unbounded_channel::<()>();
        let task = rt.spawn(async move {
            next.recv().await;
            let _: () = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg("waiter")
                .query_async(&mut con)
                .await
                .unwrap();
            next.recv().await;
            let sums: (i64, i64) = redis::pipe()
                .atomic()
                .incr("k", 1)
                .incr("k", 2)
                .query_async(&mut con)
                .await
                .unwrap();
            let name: String = redis::cmd("CLIENT")
                .arg("GETNAME")
                .query_async(&mut con)
                .await
                .unwrap();
            let id: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut con)
                .await
                .unwrap();
            (sums, name, id)
        });
        for _ in 0..2 {
            let guard = engine.lock();
            go.send(()).unwrap();
            while engine.waiting() == 0 {
                std::thread::yield_now();
            }
            assert!(
                !task.is_finished(),
                "a request ran while the engine was held"
            );
            drop(guard);
        }
        let (sums, name, after) = rt.block_on(task).unwrap();
        assert_eq!(sums, (1, 3));
        assert_eq!(name, "waiter");
        assert_eq!(after, id);
        assert_eq!(engine.waiting(), 0);
    }
}
