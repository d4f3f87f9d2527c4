//! Cost of the project's hot-path script, `assign.lua`, in the embedded
//! Redis model.
//!
//! For each batch size n (1, 2, 10, 100) it assigns seqs to batches of n
//! fresh messages spread round robin over 10,000 conversations, the way
//! `cache::assign` does: EVALSHA with the three keys and the ARGV layout of
//! the script's header, and when the script answers `{1, need}` (key
//! missing) or `{3, need}` (block exhausted), a second EVALSHA in refill
//! mode with a block of `n + 50` seqs reserved from a simulated store.
//! Every reply is checked (seqs must continue the conversation's sequence).
//!
//! Two routes: `Engine::execute` directly, and `redis::Script` through
//! `prepare_invoke().key(..).arg(..).invoke_async` on an `EmbeddedRedis`,
//! which is how the project calls it. Prints µs per EVALSHA and per message
//! (the refill calls count as EVALSHAs; messages count once each), measured
//! as the thread's CPU time (Linux schedstat), which leaves out time other
//! processes take from it, and as wall time. Each figure is the best of
//! several fresh runs (`--reps`, default 3), with the median alongside: the
//! best is the least disturbed by whatever else the machine is doing.
//! Set-up and tear-down stay outside the measurement. It uses mimalloc, as
//! the `msgtransfer` binary does.
//!
//! A benchmark, not a test: `cargo run --release --example bench_assign`.
//! Optional arguments: `--reps R`, `--engine` or `--invoke` for one route
//! only, and the batch sizes to run, e.g. `-- --reps 5 --engine 1 2`.

// The same allocator as the msgtransfer binary, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use msgtransfer::embedded::redis::{EmbeddedRedis, Engine, Reply, shared_engine};
use msgtransfer::ports::clock::{Clock, ManualClock, SystemClock};

const SCRIPT: &str = include_str!("../src/cache/assign.lua");
const CONVERSATIONS: usize = 10_000;
/// Fixed "now" (ms) of the run; the dedup epoch 20416 in the keys is
/// `NOW / 86_400_000` for a one-day dedup window.
const NOW_MS: i64 = 1_763_942_400_000;
const DEDUP_TTL_MS: &str = "172800000";

/// The ~300-byte start of a cached message's JSON, up to the seq, around
/// the message's clientMsgID and serverMsgID: every message's JSON differs,
/// as in the project, so the script builds and stores new strings each
/// time. (Lua 5.1 hashes only every n-th byte of a long string, so strings
/// that differ in a single short field often collide in its string table;
/// two random IDs make that as rare as it is with real messages.)
fn json_prefix() -> (String, String) {
    let head = r#"{"sendID":"u1000001","recvID":"u1000002","groupID":"","clientMsgID":""#;
    let mut tail = String::from(
        r#"","senderPlatformID":1,"senderNickname":"someone","senderFaceURL":"https://example.invalid/face.png","sessionType":1,"msgFrom":100,"contentType":101,"#,
    );
    // The clientMsgID, then `","serverMsgID":"` and the serverMsgID.
    while head.len() + 32 + 17 + 32 + tail.len() < 295 {
        tail.push(' ');
    }
    tail.push_str(r#""seq":"#);
    (head.to_owned(), tail)
}

/// The ~250-byte rest of it, after the seq: `,"content":"`, then the
/// content (32 varying characters and a fixed text), `","sendTime":`, the
/// send time, and the fixed rest.
fn json_suffix() -> [String; 3] {
    let head = r#","content":""#;
    let middle = r#"eyJjb250ZW50IjoiaGVsbG8sIHRoaXMgaXMgYSB0ZXN0In0","sendTime":"#;
    let mut tail = String::from(
        r#","createTime":1763942400000,"status":2,"isRead":false,"options":{},"offlinePushInfo":null,"atUserIDList":[],"attachedInfo":"","ex":""#,
    );
    while head.len() + 32 + middle.len() + 13 + tail.len() < 249 {
        tail.push(' ');
    }
    tail.push('}');
    [head.to_owned(), middle.to_owned(), tail]
}

/// Message `n`'s clientMsgID, 32 hex digits that look random, as OpenIM's
/// (an MD5) do: two rounds of splitmix64 over the message number.
fn client_msg_id(n: u64) -> (u64, u64) {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let hi = mix(n);
    (hi, mix(hi))
}

/// One conversation as the simulated client sees it.
struct Conv {
    id: String,
    keys: [Vec<u8>; 3],
    sender: String,
    /// The simulated Mongo max_seq (what `reserve_seqs` hands out from).
    store_max: i64,
    /// The next seq the script must hand out.
    next_seq: i64,
}

/// The workload: conversations, payloads and a reusable argument arena.
struct Workload {
    convs: Vec<Conv>,
    prefix: (String, String),
    suffix: [String; 3],
    msg_counter: u64,
    arena: Vec<u8>,
    spans: Vec<(usize, usize)>,
    /// The `predicted:offset` list of the call being built.
    list: String,
    pub evalshas: u64,
    pub messages: u64,
}

/// Refill parameters for the second call of a batch.
#[derive(Clone, Copy)]
struct Refill {
    mode: i64,
    base: i64,
    block: i64,
}

impl Workload {
    fn new() -> Self {
        let convs = (0..CONVERSATIONS)
            .map(|c| {
                let id = format!("si_u{}_u{}", c, c + 1);
                let malloc = format!("MALLOC_SEQ:{id}");
                Conv {
                    keys: [
                        malloc.clone().into_bytes(),
                        format!("{{{malloc}}}:DEDUP:20416").into_bytes(),
                        format!("{{{malloc}}}:DEDUP:20415").into_bytes(),
                    ],
                    sender: format!("u{c}"),
                    id,
                    store_max: 0,
                    next_seq: 1,
                }
            })
            .collect();
        Workload {
            convs,
            prefix: json_prefix(),
            suffix: json_suffix(),
            msg_counter: 0,
            arena: Vec::new(),
            spans: Vec::new(),
            list: String::new(),
            evalshas: 0,
            messages: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.spans.push((start, self.arena.len()));
    }

    fn push_int(&mut self, n: i64) {
        let start = self.arena.len();
        // Writing into a Vec cannot fail.
        let _ = write!(self.arena, "{n}");
        self.spans.push((start, self.arena.len()));
    }

    /// Writes the ARGV of one call into the arena (keys are separate).
    /// `first_msg` numbers the batch's clientMsgIDs.
    fn build_argv(&mut self, c: usize, n: usize, first_msg: u64, refill: Option<Refill>) {
        self.arena.clear();
        self.spans.clear();
        let id = std::mem::take(&mut self.convs[c].id);
        self.push(id.as_bytes());
        self.push_int(NOW_MS);
        self.push(b"5f0e3c2a9b8d7e6f1a2b3c4d5e6f7a8b");
        let r = refill.unwrap_or(Refill {
            mode: 0,
            base: 0,
            block: 0,
        });
        self.push_int(r.mode);
        self.push_int(r.base);
        self.push_int(r.block);
        self.push(DEDUP_TTL_MS.as_bytes());
        self.push(b"31536000");
        self.push(b"3000");
        self.push(b"86400");
        self.push(b"2592000");
        self.push_int(n as i64);
        // The cache is written by the script (not Redis Cluster), the
        // predictions are consecutive, and the ledger is kept with nothing
        // looked up in it: the service's case. The `predicted:offset` list
        // is filled in once the JSONs are written.
        self.push(b"1");
        self.push_int(self.convs[c].next_seq);
        let list_span = self.spans.len();
        self.spans.push((0, 0));
        let mut list = std::mem::take(&mut self.list);
        list.clear();
        self.push(b"0");
        let (prefix, suffix) = (
            std::mem::take(&mut self.prefix),
            std::mem::take(&mut self.suffix),
        );
        for i in 0..n as u64 {
            let msg = first_msg + i;
            let start = self.arena.len();
            // Writing into a Vec cannot fail.
            let (hi, lo) = client_msg_id(msg);
            let _ = write!(self.arena, "{hi:016x}{lo:016x}");
            self.spans.push((start, self.arena.len()));
            self.push(b"1");
            // The JSON with the seq this message will get (the service
            // predicts it the same way), then that seq and where it starts.
            let start = self.arena.len();
            let (shi, slo) = client_msg_id(msg ^ 0x5eed_5eed_5eed_5eed);
            let _ = write!(
                self.arena,
                "{}{hi:016x}{lo:016x}\",\"serverMsgID\":\"{shi:016x}{slo:016x}{}",
                prefix.0, prefix.1
            );
            let seq_at = self.arena.len() - start;
            let predicted = self.convs[c].next_seq + i as i64;
            let (chi, clo) = client_msg_id(msg ^ 0xc0de_c0de_c0de_c0de);
            let _ = write!(
                self.arena,
                "{predicted}{}{chi:016x}{clo:016x}{}{}{}",
                suffix[0],
                suffix[1],
                NOW_MS + msg as i64,
                suffix[2]
            );
            self.spans.push((start, self.arena.len()));
            if !list.is_empty() {
                list.push(' ');
            }
            let _ = write!(list, "{predicted}:{seq_at}");
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(list.as_bytes());
        self.spans[list_span] = (start, self.arena.len());
        self.list = list;
        (self.prefix, self.suffix) = (prefix, suffix);
        let sender = std::mem::take(&mut self.convs[c].sender);
        self.push(sender.as_bytes());
        self.convs[c].sender = sender;
        self.convs[c].id = id;
    }

    fn argv(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(a, b)| &self.arena[a..b])
    }

    /// Checks a reply and decides what comes next: `None` when the batch
    /// is done, `Some(refill)` for a second call.
    fn handle(&mut self, c: usize, n: usize, reply: &[i64]) -> Option<Refill> {
        let conv = &mut self.convs[c];
        match reply.first().copied() {
            Some(0) => {
                // No message was known before: the reply lists none, and
                // they got the seqs after `prev`.
                assert_eq!(reply, [0, conv.next_seq - 1], "{reply:?}");
                conv.next_seq += n as i64;
                self.messages += n as u64;
                None
            }
            Some(mode @ (1 | 3)) => {
                assert_eq!(reply, [mode, n as i64]);
                let block = n as i64 + 50;
                let base = conv.store_max;
                conv.store_max += block;
                Some(Refill { mode, base, block })
            }
            _ => panic!("unexpected reply {reply:?}"),
        }
    }
}

fn ints(r: Reply) -> Vec<i64> {
    match r {
        Reply::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Reply::Int(i) => i,
                other => panic!("non-integer in reply: {other:?}"),
            })
            .collect(),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Batches to run for batch size `n`: at least 100,000 messages and two
/// rounds over the conversations, but at most a million messages.
fn batches_for(n: usize) -> usize {
    (100_000 / n).max(2 * CONVERSATIONS).min(1_000_000 / n)
}

/// One run's totals.
#[derive(Clone, Copy)]
struct Run {
    evalshas: u64,
    messages: u64,
    /// Wall time, from the clock.
    wall_us: u64,
    /// Time this thread spent on a CPU, which leaves out the time other
    /// processes on a busy machine took from it.
    cpu_us: u64,
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), if known.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Measures `f` on the wall clock and on the thread's CPU time.
fn measure(wall: &SystemClock, f: impl FnOnce() -> (u64, u64)) -> Run {
    let (w0, c0) = (wall.monotonic_us(), thread_cpu_ns());
    let (evalshas, messages) = f();
    let wall_us = wall.monotonic_us() - w0;
    let cpu_us = match (c0, thread_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) / 1000,
        _ => wall_us,
    };
    Run {
        evalshas,
        messages,
        wall_us,
        cpu_us,
    }
}

fn report(route: &str, n: usize, runs: &[Run]) {
    let pick = |key: fn(&Run) -> u64| {
        let mut v: Vec<Run> = runs.to_vec();
        v.sort_by_key(key);
        (v[0], v[v.len() / 2])
    };
    let (best_cpu, median_cpu) = pick(|r| r.cpu_us);
    let (best_wall, _) = pick(|r| r.wall_us);
    let per = |t: u64, d: u64| t as f64 / d as f64;
    println!(
        "{route:<13} n={n:<4} {:>6} EVALSHA {:>7} msgs | cpu best {:>7.2} us/EVALSHA {:>6.2} us/msg, median {:>7.2} {:>6.2} | wall best {:>7.2} {:>6.2}",
        best_cpu.evalshas,
        best_cpu.messages,
        per(best_cpu.cpu_us, best_cpu.evalshas),
        per(best_cpu.cpu_us, best_cpu.messages),
        per(median_cpu.cpu_us, median_cpu.evalshas),
        per(median_cpu.cpu_us, median_cpu.messages),
        per(best_wall.wall_us, best_wall.evalshas),
        per(best_wall.wall_us, best_wall.messages),
    );
}

fn bench_engine(engine: &mut Engine, w: &mut Workload, n: usize) -> (u64, u64) {
    let mut session = engine.new_session();
    let sha = match engine.execute(&mut session, 0, &[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()]) {
        Reply::Bulk(sha) => sha,
        other => panic!("SCRIPT LOAD failed: {other:?}"),
    };
    for b in 0..batches_for(n) {
        let c = b % CONVERSATIONS;
        let first_msg = w.msg_counter;
        w.msg_counter += n as u64;
        let mut refill = None;
        loop {
            w.build_argv(c, n, first_msg, refill);
            let reply = {
                let mut args: Vec<&[u8]> = Vec::with_capacity(8 + w.spans.len());
                args.extend_from_slice(&[b"EVALSHA", &sha, b"3"]);
                args.extend(w.convs[c].keys.iter().map(Vec::as_slice));
                args.extend(w.argv());
                ints(engine.execute(&mut session, NOW_MS, &args))
            };
            w.evalshas += 1;
            refill = w.handle(c, n, &reply);
            if refill.is_none() {
                break;
            }
        }
    }
    (w.evalshas, w.messages)
}

async fn bench_invoke(con: &mut EmbeddedRedis, w: &mut Workload, n: usize) -> (u64, u64) {
    let script = redis::Script::new(SCRIPT);
    for b in 0..batches_for(n) {
        let c = b % CONVERSATIONS;
        let first_msg = w.msg_counter;
        w.msg_counter += n as u64;
        let mut refill = None;
        loop {
            w.build_argv(c, n, first_msg, refill);
            let mut inv = script.prepare_invoke();
            for k in &w.convs[c].keys {
                inv.key(k.as_slice());
            }
            for a in w.argv() {
                inv.arg(a);
            }
            let reply: Vec<i64> = inv.invoke_async(con).await.expect("script");
            w.evalshas += 1;
            refill = w.handle(c, n, &reply);
            if refill.is_none() {
                break;
            }
        }
    }
    (w.evalshas, w.messages)
}

fn main() {
    // The one sanctioned reader of real time, used only to measure.
    let wall = SystemClock::new();
    let mut reps = 3;
    let mut sizes: Vec<usize> = Vec::new();
    let (mut engine, mut invoke) = (true, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--reps" {
            reps = args.next().and_then(|r| r.parse().ok()).expect("--reps R");
        } else if a == "--engine" {
            invoke = false;
        } else if a == "--invoke" {
            engine = false;
        } else {
            sizes.push(a.parse().expect("batch size"));
        }
    }
    let sizes = if sizes.is_empty() {
        vec![1, 2, 10, 100]
    } else {
        sizes
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for &n in &sizes {
        if engine {
            // Set-up and tear-down (dropping a keyspace of a million keys)
            // stay outside the measurement.
            let runs: Vec<Run> = (0..reps)
                .map(|_| {
                    let (mut engine, mut w) = (Engine::new(1), Workload::new());
                    measure(&wall, || bench_engine(&mut engine, &mut w, n))
                })
                .collect();
            report("engine", n, &runs);
        }
        if invoke {
            let runs: Vec<Run> = (0..reps)
                .map(|_| {
                    let clock = Arc::new(ManualClock::new(NOW_MS));
                    let mut con = EmbeddedRedis::new(shared_engine(1), clock);
                    let mut w = Workload::new();
                    measure(&wall, || rt.block_on(bench_invoke(&mut con, &mut w, n)))
                })
                .collect();
            report("invoke_async", n, &runs);
        }
    }
}
