//! `msgtransfer load`: seeded OpenIM traffic (the demo's generator) into
//! the real `toRedis` topic, at a chosen rate, with a record of what was
//! sent for `audit`.
//!
//! Every message's `sendTime` is the wall time it is produced at (a copy
//! produced again keeps its first `sendTime`, as a retrying producer
//! would), so the daemon's end-to-end latency histogram measures produce →
//! persisted. With `--wait`, `load` watches the daemon's `/metrics` until it
//! has persisted as many messages as were sent, and reports throughput
//! (first produce → last persisted) and latency quantiles.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use prost::Message;

use crate::backends::kafka::KafkaProducer;
use crate::config::Config;
use crate::demo::workload::{self, Workload, WorkloadSpec};
use crate::ports::clock::SystemClock;
use crate::ports::log::Delivered;
use crate::ports::{BoxFuture, Clock, LogError, OutRecord};
use crate::proto::MsgData;

use super::metrics_text;

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    /// Distinct messages.
    pub messages: u64,
    /// Conversations.
    pub conversations: u64,
    /// Seed of the traffic.
    pub seed: u64,
    /// Messages per second; 0 sends as fast as the broker takes them.
    pub rate: f64,
    /// Fraction of records produced a second time.
    pub duplicate_rate: f64,
    /// Where the record of what was sent goes.
    pub record: PathBuf,
    /// Print progress to stderr.
    pub progress: bool,
    /// Wait this long at most for the daemon to persist everything
    /// (needs its `/metrics` port); `None` does not wait.
    pub wait: Option<Duration>,
}

/// What `load` sent: enough to generate the same traffic again.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadRecord {
    /// Format version.
    pub version: u32,
    /// Topic the records went to.
    pub topic: String,
    /// Generator parameters.
    pub messages: u64,
    /// Generator parameters.
    pub conversations: u64,
    /// Generator parameters.
    pub seed: u64,
    /// Generator parameters.
    pub duplicate_rate: f64,
    /// Records acknowledged, in generation order (a prefix of the
    /// workload when interrupted).
    pub records_sent: u64,
    /// Wall time of the first produce, ms.
    pub first_produce_ms: i64,
    /// Wall time of the last acknowledgement, ms.
    pub last_ack_ms: i64,
}

impl LoadRecord {
    /// The workload this record describes (all of it, see `records_sent`).
    pub fn workload(&self) -> Workload {
        workload::generate(&WorkloadSpec {
            messages: self.messages,
            conversations: self.conversations,
            seed: self.seed,
            duplicate_rate: self.duplicate_rate,
            topic: Arc::from(self.topic.as_str()),
            start_ms: self.first_produce_ms,
        })
    }

    /// Reads a record file.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the load record {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a load record", path.display()))
    }
}

/// Figures measured while waiting for the daemon.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Persisted {
    /// Stored messages sent (distinct).
    pub stored: u64,
    /// Message writes the daemon counted meanwhile (redelivered messages
    /// are written again, so this can exceed `stored`).
    pub persisted: u64,
    /// From the first produce to the moment all were persisted, s.
    pub seconds: f64,
    /// Stored messages per second over that span.
    pub msgs_per_s: f64,
    /// Median produce → persisted latency, ms (histogram estimate).
    pub p50_ms: Option<f64>,
    /// 99th percentile produce → persisted latency, ms.
    pub p99_ms: Option<f64>,
}

/// The outcome of a load.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadOutcome {
    /// What was sent.
    pub record: LoadRecord,
    /// Records produced per second.
    pub records_per_s: f64,
    /// Filled in with `--wait`.
    pub persisted: Option<Persisted>,
}

/// Distinct stored units (message in a conversation) of a workload's first
/// `n` records.
fn stored_units(work: &Workload, n: usize) -> u64 {
    let sent = work.records.iter().take(n).map(|r| r.value.as_ref());
    let units: BTreeSet<_> = crate::embedded::history::inputs(sent)
        .into_iter()
        .filter(|i| i.stored)
        .map(|i| (i.conversation_id, i.client_msg_id))
        .collect();
    units.len() as u64
}

/// Runs a load against the brokers and topic of `cfg`.
pub async fn run(cfg: &Config, args: &LoadArgs) -> anyhow::Result<LoadOutcome> {
    let clock = SystemClock::new();
    let topic: Arc<str> = Arc::from(cfg.kafka.to_redis_topic.as_str());
    let producer = KafkaProducer::new(&crate::daemon::kafka_settings(cfg)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    producer
        .warm(std::slice::from_ref(&topic))
        .await
        .map_err(|e| anyhow::anyhow!("kafka.yml: toRedisTopic {topic}: {e}"))?;
    let port = cfg.prometheus_port;
    let before = match (args.wait, port) {
        (Some(_), Some(p)) => Some(metrics_text::scrape(p).await.with_context(|| {
            format!("--wait: the daemon's /metrics on 127.0.0.1:{p} does not answer")
        })?),
        (Some(_), None) => anyhow::bail!(
            "--wait needs the daemon's metrics: set prometheus.enable and prometheus.ports \
             in openim-msgtransfer.yml"
        ),
        _ => None,
    };

    let start_ms = clock.now_ms();
    let mut record = LoadRecord {
        version: 1,
        topic: topic.to_string(),
        messages: args.messages,
        conversations: args.conversations,
        seed: args.seed,
        duplicate_rate: args.duplicate_rate,
        records_sent: 0,
        first_produce_ms: start_ms,
        last_ack_ms: start_ms,
    };
    let work = record.workload();
    let total = work.records.len();
    let mut send_time: Vec<Option<i64>> = vec![None; args.messages as usize];
    let mut pending: VecDeque<BoxFuture<'static, Result<Delivered, LogError>>> = VecDeque::new();
    let window = 20_000;
    let started_us = clock.monotonic_us();
    let mut last_progress = started_us;
    for (i, rec) in work.records.iter().enumerate() {
        if args.rate > 0.0 {
            let due_us = started_us + (i as f64 * 1e6 / args.rate) as u64;
            let now = clock.monotonic_us();
            if due_us > now {
                clock.sleep(Duration::from_micros(due_us - now)).await;
            }
        }
        let n = work.index[i] as usize;
        let t = *send_time[n].get_or_insert_with(|| clock.now_ms());
        let mut m = MsgData::decode(rec.value.as_ref()).context("generated record")?;
        m.send_time = t;
        let out = OutRecord {
            value: Bytes::from(m.encode_to_vec()),
            ..rec.clone()
        };
        let ack = loop {
            match producer.enqueue(&out) {
                Some(Ok(ack)) => break ack,
                Some(Err(e)) if e.to_string().contains("Queue full") => match pending.pop_front() {
                    Some(a) => {
                        a.await.map_err(|e| anyhow::anyhow!("produce: {e}"))?;
                        record.records_sent += 1;
                    }
                    None => clock.sleep(Duration::from_millis(5)).await,
                },
                Some(Err(e)) => anyhow::bail!("produce: {e}"),
                None => anyhow::bail!("topic {topic}: partition count unknown"),
            }
        };
        pending.push_back(Box::pin(ack));
        while pending.len() > window {
            if let Some(a) = pending.pop_front() {
                a.await.map_err(|e| anyhow::anyhow!("produce: {e}"))?;
                record.records_sent += 1;
            }
        }
        let now = clock.monotonic_us();
        if args.progress && now - last_progress >= 1_000_000 {
            last_progress = now;
            let secs = (now - started_us) as f64 / 1e6;
            eprint!(
                "\rload: {}/{} records sent, {:.0} records/s   ",
                i + 1,
                total,
                (i + 1) as f64 / secs
            );
            let _ = std::io::stderr().flush();
        }
    }
    while let Some(a) = pending.pop_front() {
        a.await.map_err(|e| anyhow::anyhow!("produce: {e}"))?;
        record.records_sent += 1;
    }
    record.last_ack_ms = clock.now_ms();
    if args.progress {
        eprintln!("\rload: {total}/{total} records sent{:30}", "");
    }
    let produce_s = ((clock.monotonic_us() - started_us) as f64 / 1e6).max(1e-6);
    std::fs::write(&args.record, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("writing the load record {}", args.record.display()))?;

    let mut outcome = LoadOutcome {
        records_per_s: total as f64 / produce_s,
        persisted: None,
        record: record.clone(),
    };
    let (Some(wait), Some(port), Some(before)) = (args.wait, port, before) else {
        return Ok(outcome);
    };
    let stored = stored_units(&work, total);
    let persisted_before =
        metrics_text::value(&before, "msgtransfer_msgs_persisted_total").unwrap_or(0.0) as u64;
    let deadline = clock.monotonic_us() + wait.as_micros() as u64;
    // Redeliveries persist some messages twice, so the counter reaching the
    // number sent is not enough: wait until it stops moving with both input
    // topics drained, and take the last change as the moment of the last
    // persist.
    let mut last_value = u64::MAX;
    let mut last_change_ms = clock.now_ms();
    let mut last_change_us = clock.monotonic_us();
    loop {
        let now_text = metrics_text::scrape(port).await.unwrap_or_default();
        let persisted = (metrics_text::value(&now_text, "msgtransfer_msgs_persisted_total")
            .unwrap_or(0.0) as u64)
            .saturating_sub(persisted_before);
        if persisted != last_value {
            last_value = persisted;
            last_change_ms = clock.now_ms();
            last_change_us = clock.monotonic_us();
        }
        let lag: f64 = now_text
            .lines()
            .filter_map(|l| l.strip_prefix("msgtransfer_consumer_lag{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum();
        let quiet = clock.monotonic_us() - last_change_us >= 2_000_000;
        let done = persisted >= stored && lag == 0.0 && quiet;
        if done || clock.monotonic_us() >= deadline {
            let seconds = (last_change_ms - record.first_produce_ms) as f64 / 1000.0;
            let lat = metrics_text::latency(&now_text).since(&metrics_text::latency(&before));
            outcome.persisted = Some(Persisted {
                stored,
                persisted,
                seconds,
                msgs_per_s: stored as f64 / seconds.max(1e-3),
                p50_ms: lat.quantile_ms(0.5),
                p99_ms: lat.quantile_ms(0.99),
            });
            if !done {
                anyhow::bail!(
                    "--wait: {persisted} persists for {stored} messages and lag {lag} after {} s",
                    wait.as_secs()
                );
            }
            return Ok(outcome);
        }
        if args.progress {
            eprint!("\rload: waiting, {persisted} persists for {stored} messages, lag {lag}   ");
            let _ = std::io::stderr().flush();
        }
        clock.sleep(Duration::from_millis(100)).await;
    }
}

/// The human-readable summary of a load.
pub fn summary(o: &LoadOutcome) -> String {
    let r = &o.record;
    let mut s = format!(
        "load: {} records ({} messages, {} conversations, seed {}) to {} at {:.0} records/s; record written",
        r.records_sent, r.messages, r.conversations, r.seed, r.topic, o.records_per_s
    );
    if let Some(p) = &o.persisted {
        let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0} ms"));
        s.push_str(&format!(
            "\npersisted: {} stored messages in {:.1} s from first produce = {:.0} msg/s; \
             produce->persisted latency p50 {} p99 {} (histogram estimate)",
            p.stored,
            p.seconds,
            p.msgs_per_s,
            ms(p.p50_ms),
            ms(p.p99_ms)
        ));
    }
    s
}
