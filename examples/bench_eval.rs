//! Rough throughput of scripted commands in the embedded Redis model.
//!
//! Runs 100,000 script invocations, each doing three `redis.call`s (the
//! shape of the seq-allocation and cache scripts), three ways: EVALSHA and
//! EVAL straight into the engine, and `redis::Script::invoke_async` through
//! the `redis` crate on an `EmbeddedRedis` connection. Prints calls/s.
//! A benchmark, not a test: run with `cargo run --release --example bench_eval`.

use std::sync::Arc;

use msgtransfer::embedded::redis::{EmbeddedRedis, Engine, Reply, shared_engine};
use msgtransfer::ports::clock::{Clock, ManualClock, SystemClock};

const N: u64 = 100_000;

const SCRIPT: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'last', ARGV[1])
redis.call('PEXPIRE', KEYS[1], 60000)
return n
"#;

fn report(label: &str, elapsed_us: u64) {
    let secs = elapsed_us.max(1) as f64 / 1e6;
    println!(
        "{label:<44} {N} evals in {secs:.3} s = {:>9.0} evals/s, {:>9.0} redis.call/s, {:.2} us/eval",
        N as f64 / secs,
        3.0 * N as f64 / secs,
        elapsed_us as f64 / N as f64
    );
}

fn main() {
    // The one sanctioned reader of real time, used only to measure.
    let wall = SystemClock::new();

    let mut engine = Engine::new(1);
    let mut session = engine.new_session();
    let sha = match engine.execute(&mut session, 0, &[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()]) {
        Reply::Bulk(sha) => sha,
        other => panic!("SCRIPT LOAD failed: {other:?}"),
    };
    let keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("conv:{i}").into_bytes())
        .collect();

    let start = wall.monotonic_us();
    for i in 0..N {
        let key = &keys[(i % 1000) as usize];
        let arg = i.to_string();
        let r = engine.execute(
            &mut session,
            0,
            &[b"EVALSHA", &sha, b"1", key, arg.as_bytes()],
        );
        assert!(matches!(r, Reply::Int(_)), "{r:?}");
    }
    report("Engine::execute EVALSHA", wall.monotonic_us() - start);

    let start = wall.monotonic_us();
    for i in 0..N {
        let key = &keys[(i % 1000) as usize];
        let arg = i.to_string();
        let r = engine.execute(
            &mut session,
            0,
            &[b"EVAL", SCRIPT.as_bytes(), b"1", key, arg.as_bytes()],
        );
        assert!(matches!(r, Reply::Int(_)), "{r:?}");
    }
    report("Engine::execute EVAL", wall.monotonic_us() - start);

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let clock = Arc::new(ManualClock::new(0));
        let mut con = EmbeddedRedis::new(shared_engine(1), clock);
        let script = redis::Script::new(SCRIPT);
        let start = wall.monotonic_us();
        for i in 0..N {
            let key = format!("conv:{}", i % 1000);
            let _: i64 = script
                .key(key)
                .arg(i)
                .invoke_async(&mut con)
                .await
                .expect("script");
        }
        report(
            "redis::Script::invoke_async on EmbeddedRedis",
            wall.monotonic_us() - start,
        );
    });
}
