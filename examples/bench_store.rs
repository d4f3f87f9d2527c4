//! Ceiling of the document store for the writes the persistence stage
//! makes, through the project's own adapter (`backends::mongo`).
//!
//! On the server at `MONGODB_URI` (default `mongodb://127.0.0.1:27017/`),
//! in a database of its own that it drops afterwards, it measures with one
//! writer at a time:
//! 1. creating `--buckets` full buckets (100 messages each, one
//!    `write_bucket` call each: the insert path);
//! 2. rewriting 10 slots of each full bucket (the update path, what a
//!    persistence batch does to a bucket that exists);
//! 3. a first message for each of as many new conversations (insert of a
//!    bucket with one message).
//!
//! It prints writes per second and messages per second for each, so that
//! the daemon's persistence rate can be read against what the store
//! allows. A benchmark, not a test: `cargo run --release --example
//! bench_store -- --buckets 100`.

use std::sync::Arc;

use msgtransfer::backends::mongo::MongoStore;
use msgtransfer::ports::DocStore;
use msgtransfer::ports::clock::{Clock, SystemClock};
use msgtransfer::ports::store::SlotMsg;
use msgtransfer::proto::MsgData;

fn message(conv: usize, seq: i64) -> std::sync::Arc<SlotMsg> {
    std::sync::Arc::new(SlotMsg::encode(message_data(conv, seq)))
}

fn message_data(conv: usize, seq: i64) -> MsgData {
    let words = " lorem".repeat(12);
    MsgData {
        send_id: format!("u{conv}"),
        recv_id: format!("u{}", conv + 1),
        client_msg_id: format!("bench-{conv}-{seq}"),
        server_msg_id: format!("s-{conv}-{seq}"),
        sender_platform_id: 2,
        sender_nickname: format!("nick u{conv}"),
        session_type: 1,
        msg_from: 100,
        content_type: 101,
        content: format!("{{\"content\":\"message {seq}{words}\"}}").into_bytes(),
        seq,
        send_time: 1_764_000_000_000 + seq,
        create_time: 1_764_000_000_000 + seq,
        status: 2,
        ..MsgData::default()
    }
}

fn report(what: &str, writes: usize, msgs: usize, micros: u64) {
    let s = micros as f64 / 1e6;
    println!(
        "{what:<40} {writes:>6} writes in {s:>7.2} s = {:>8.1} writes/s = {:>8.0} msgs/s",
        writes as f64 / s,
        msgs as f64 / s
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let buckets: usize = args
        .iter()
        .position(|a| a == "--buckets")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(100);
    let uri = std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017/".into());
    let name = format!("bench_store_{}", std::process::id());
    let client = mongodb::Client::with_uri_str(&uri).await?;
    let db = client.database(&name);
    let store = Arc::new(MongoStore::new(&db));
    store
        .ensure_indexes()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let clock = SystemClock::new();
    println!("store ceiling on {uri} (database {name}), one writer:");

    let t = clock.monotonic_us();
    for c in 0..buckets {
        let slots = (0..100).map(|i| (i, message(c, i as i64 + 1))).collect();
        store
            .write_bucket(format!("si_bench_{c}:0"), slots)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report(
        "create full bucket (100 msgs)",
        buckets,
        buckets * 100,
        clock.monotonic_us() - t,
    );

    let t = clock.monotonic_us();
    for c in 0..buckets {
        let slots = (50..60).map(|i| (i, message(c, i as i64 + 1))).collect();
        store
            .write_bucket(format!("si_bench_{c}:0"), slots)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report(
        "rewrite 10 slots of a full bucket",
        buckets,
        buckets * 10,
        clock.monotonic_us() - t,
    );

    let t = clock.monotonic_us();
    for c in 0..buckets {
        store
            .write_bucket(format!("si_first_{c}:0"), vec![(0, message(c, 1))])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report(
        "first message of a conversation",
        buckets,
        buckets,
        clock.monotonic_us() - t,
    );
    db.drop().await?;
    Ok(())
}
