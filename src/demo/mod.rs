//! `msgtransfer demo`: the main job on embedded backends, zero setup.
//!
//! It generates OpenIM traffic ([`workload`]), produces it into the
//! embedded `toRedis` topic while the service runs (both consumer loops, on a
//! two-worker runtime), optionally kills the service — uncommitted work and
//! all — every N input records and starts a fresh instance, then drains and
//! audits the end state with the shared checker ([`crate::check`]).
//!
//! Figures: throughput is distinct messages over the time from the first
//! produce to the moment everything is committed through to Mongo (audit
//! excluded); latency is produce → first Mongo write of each stored message.
//! The producer keeps at most `window` records uncommitted, as a real
//! upstream under back-pressure would, so latencies reflect a bounded
//! backlog rather than a pre-filled topic.

pub mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng as _, SeedableRng};
use tokio::sync::watch;

use crate::check::{self, Report};
use crate::embedded::FaultPlan;
use crate::embedded::history;
use crate::embedded::hook::EmbeddedHook;
use crate::embedded::log::EmbeddedLog;
use crate::embedded::redis::{EmbeddedRedis, FaultHook, shared_engine};
use crate::embedded::store::EmbeddedStore;
use crate::metrics::Metrics;
use crate::ports::clock::SystemClock;
use crate::ports::{ConsumerEvent, LogConsumer, OutRecord, SeededRng, SharedClock};
use crate::service::{self, ServiceConfig, Wiring};

/// Options of a demo run.
#[derive(Clone, Debug)]
pub struct DemoArgs {
    /// Distinct messages.
    pub messages: u64,
    /// Conversations.
    pub conversations: u64,
    /// Seed of the workload and of the service's randomness.
    pub seed: u64,
    /// Fraction of records produced twice.
    pub duplicate_rate: f64,
    /// Kill and restart the service every this many input records (0: never).
    pub crash_every: u64,
    /// Print one JSON line at the end.
    pub json: bool,
    /// Print progress to stderr while running.
    pub progress: bool,
    /// Partitions per topic.
    pub partitions: i32,
    /// Uncommitted input records the producer allows.
    pub window: u64,
    /// Transfer loops (members of the `toRedis` group) in the service.
    pub transfer_loops: usize,
    /// Runtime worker threads (the machine's cores, by default 2).
    pub workers: usize,
    /// Also kill the service when the total of input records consumed
    /// reaches each of these (ascending), independent of `crash_every`.
    pub crash_at: Vec<u64>,
    /// Failure rates injected into the embedded backends, if any.
    pub faults: Option<FaultRates>,
}

/// Failure probabilities per operation for the embedded backends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultRates {
    /// Produces whose acknowledgement is lost (the record is appended).
    pub produce: f64,
    /// Store operations lost before or after doing their work.
    pub store: f64,
    /// Redis commands lost before or after running.
    pub redis: f64,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            messages: 200_000,
            conversations: 2000,
            seed: 1,
            duplicate_rate: 0.0,
            crash_every: 0,
            json: false,
            progress: true,
            partitions: 8,
            window: 400_000,
            transfer_loops: 4,
            workers: 2,
            crash_at: Vec::new(),
            faults: None,
        }
    }
}

/// What a run measured and found.
#[derive(Clone, Debug)]
pub struct DemoOutcome {
    /// The checker's report.
    pub report: Report,
    /// Slots or cache keys whose position disagrees with their seq.
    pub misplaced: u64,
    /// Records produced (duplicates included).
    pub records: u64,
    /// Producer duplicates among them.
    pub producer_duplicates: u64,
    /// Service instances killed and restarted.
    pub restarts: u64,
    /// Seconds from first produce to everything committed.
    pub elapsed_s: f64,
    /// Distinct messages per second over `elapsed_s`.
    pub msgs_per_s: f64,
    /// CPU seconds (user + system, every thread) the process used over
    /// `elapsed_s`, where the clock can tell. Less noisy than `msgs_per_s`
    /// on a shared machine: it counts the work, not the waiting.
    pub service_cpu_s: Option<f64>,
    /// The part of `service_cpu_s` the kernel spent for us. Most of it is
    /// zeroing memory the process touches for the first time, so it shows
    /// how much of a run went on fresh memory rather than on our code.
    pub service_sys_s: Option<f64>,
    /// Growth of resident memory over `elapsed_s`, MiB: what the service
    /// and the embedded backends kept (cache, logs, documents) plus what the
    /// allocator holds for reuse.
    pub resident_growth_mb: Option<f64>,
    /// `service_cpu_s` per distinct message, µs.
    pub cpu_us_per_msg: Option<f64>,
    /// Median produce → persisted latency, ms.
    pub p50_ms: f64,
    /// 99th percentile produce → persisted latency, ms.
    pub p99_ms: f64,
    /// Final counters.
    pub metrics: Vec<(&'static str, u64)>,
    /// Seconds spent generating the workload.
    pub generate_s: f64,
    /// Seconds spent auditing.
    pub audit_s: f64,
}

impl DemoOutcome {
    /// The final value of the counter called `name` (0 if there is none).
    pub fn metric(&self, name: &str) -> u64 {
        self.metrics
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }

    /// Whether the checker found nothing.
    pub fn clean(&self) -> bool {
        self.report.anomalies() == 0 && self.misplaced == 0
    }
}

/// Decides when the embedded service is killed: it counts the input records
/// handed to the service and, at the armed threshold, stops handing out
/// more and fires, so each life of the service sees exactly its share of
/// the input before it dies.
#[derive(Debug)]
struct CrashSwitch {
    consumed: AtomicU64,
    threshold: AtomicU64,
    fired: tokio::sync::Notify,
}

impl Default for CrashSwitch {
    fn default() -> Self {
        Self {
            consumed: AtomicU64::new(0),
            threshold: AtomicU64::new(u64::MAX),
            fired: tokio::sync::Notify::new(),
        }
    }
}

impl CrashSwitch {
    fn tripped(&self) -> bool {
        self.consumed.load(Ordering::SeqCst) >= self.threshold.load(Ordering::SeqCst)
    }
}

/// A `toRedis` consumer that obeys a [`CrashSwitch`].
struct CrashingConsumer {
    inner: crate::embedded::log::EmbeddedConsumer,
    switch: Arc<CrashSwitch>,
}

impl LogConsumer for CrashingConsumer {
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> crate::ports::BoxFuture<'_, Result<ConsumerEvent, crate::ports::LogError>> {
        Box::pin(async move {
            let sw = self.switch.clone();
            if sw.tripped() {
                // About to be killed: nothing more comes in.
                self.inner.log_clock().sleep(wait).await;
                return Ok(ConsumerEvent::Idle);
            }
            let ev = self.inner.poll(max, wait).await?;
            let ConsumerEvent::Records(mut recs) = ev else {
                return Ok(ev);
            };
            let room = sw
                .threshold
                .load(Ordering::SeqCst)
                .saturating_sub(sw.consumed.load(Ordering::SeqCst));
            recs.truncate(usize::try_from(room).unwrap_or(usize::MAX));
            sw.consumed.fetch_add(recs.len() as u64, Ordering::SeqCst);
            if sw.tripped() {
                sw.fired.notify_one();
            }
            Ok(ConsumerEvent::Records(recs))
        })
    }

    fn commit(
        &mut self,
        offsets: Vec<(i32, i64)>,
    ) -> crate::ports::BoxFuture<'_, Result<(), crate::ports::LogError>> {
        self.inner.commit(offsets)
    }

    fn release(
        &mut self,
        partitions: Vec<i32>,
    ) -> crate::ports::BoxFuture<'_, Result<(), crate::ports::LogError>> {
        self.inner.release(partitions)
    }
}

/// Runs the demo on a runtime with `args.workers` worker threads.
pub fn run(args: &DemoArgs) -> anyhow::Result<DemoOutcome> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?;
    rt.block_on(run_async(args.clone(), Arc::new(SystemClock::new())))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The demo itself, on whatever runtime and clock the caller provides.
pub async fn run_async(args: DemoArgs, clock: SharedClock) -> anyhow::Result<DemoOutcome> {
    let cfg = ServiceConfig::default();
    let topics = cfg.transfer.topics.clone();
    let t0 = clock.monotonic_us();
    let work = workload::generate(&workload::WorkloadSpec {
        messages: args.messages,
        conversations: args.conversations,
        seed: args.seed,
        duplicate_rate: args.duplicate_rate,
        topic: topics.to_redis.clone(),
        start_ms: clock.now_ms(),
    });
    let generate_s = (clock.monotonic_us() - t0) as f64 / 1e6;
    if args.progress {
        eprintln!(
            "demo: generated {} records ({} producer duplicates) in {:.1}s",
            work.records.len(),
            work.duplicates,
            generate_s
        );
    }

    let n = args.messages as usize;
    let produced_us: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let persisted_us: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let plan = args.faults.map(|f| {
        Arc::new(FaultPlan::new(
            args.seed ^ 0x5eed,
            f.produce,
            f.store,
            f.redis,
        ))
    });
    let mut log = EmbeddedLog::new(args.partitions, 1_000_000, clock.clone());
    let engine = shared_engine(args.seed);
    // Room for the keys the run will leave — a MSG_CACHE per stored message
    // (the isSendMsg copies add about 3 %), plus MALLOC_SEQ, dedup epochs
    // and senders' read seqs per conversation — so the keyspace never
    // rehashes mid-run while every transfer waits on it.
    engine.lock().reserve_keys(
        usize::try_from(args.messages + args.messages / 16 + args.conversations * 8).unwrap_or(0),
    );
    let mut store = {
        let persisted_us = persisted_us.clone();
        let clock = clock.clone();
        EmbeddedStore::new().with_observer(Box::new(move |_doc, m| {
            if let Some(i) = workload::message_number(m.client_msg_id()) {
                if let Some(slot) = persisted_us.get(i as usize) {
                    let _ = slot.compare_exchange(
                        0,
                        clock.monotonic_us().max(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
        }))
    };
    let redis_faults: Option<FaultHook> = plan.as_ref().map(FaultPlan::redis_hook);
    if let Some(plan) = &plan {
        log = log.with_faults(plan.clone());
        store = store.with_faults(plan.clone());
    }
    let hook = EmbeddedHook::default();
    let metrics = Arc::new(Metrics::default());

    let mut batches: Vec<Vec<OutRecord>> = Vec::new();
    let mut records = work.records.into_iter();
    loop {
        let chunk: Vec<OutRecord> = records.by_ref().take(4096).collect();
        if chunk.is_empty() {
            break;
        }
        batches.push(chunk);
    }
    drop(records);

    // The upstream: the msg RPC producing into toRedis under back-pressure.
    let produced_all = Arc::new(AtomicBool::new(false));
    let start_us = clock.monotonic_us();
    let start_usage = clock.usage();
    let producer = {
        let log = log.clone();
        let clock = clock.clone();
        let produced_us = produced_us.clone();
        let produced_all = produced_all.clone();
        let group = cfg.groups.to_redis.clone();
        let topic = topics.to_redis.clone();
        let window = args.window.max(1);
        let index = work.index;
        tokio::spawn(async move {
            // `flatten` drops each chunk once it is produced, so the log's
            // growth reuses the workload's memory instead of taking fresh
            // pages.
            for (i, rec) in batches.into_iter().flatten().enumerate() {
                if i % 256 == 0 {
                    while log.lag(&group, &topic) > window {
                        clock.sleep(Duration::from_millis(1)).await;
                    }
                }
                let idx = index[i] as usize;
                let now = clock.monotonic_us().max(1);
                let _ =
                    produced_us[idx].compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                log.append(rec)
                    .map_err(|e| anyhow::anyhow!("produce failed: {e}"))?;
            }
            produced_all.store(true, Ordering::SeqCst);
            anyhow::Ok(())
        })
    };

    let total_records = args.messages + work.duplicates;
    let mut crash_at = args.crash_at.clone();
    crash_at.sort_unstable();
    let switch = Arc::new(CrashSwitch::default());
    let mut crash_rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed ^ 0xc4a5);
    let mut restarts = 0u64;
    let mut last_progress = clock.monotonic_us();
    let end_us;
    let end_usage;
    'service: loop {
        let (tx, rx) = watch::channel(false);
        let mut redis = EmbeddedRedis::new(engine.clone(), clock.clone());
        if let Some(hook) = &redis_faults {
            redis = redis.with_fault_hook(hook.clone());
        }
        let wiring = Wiring {
            redis,
            store: Arc::new(store.clone()),
            producer: Arc::new(log.producer()),
            hook: Arc::new(hook.clone()),
            clock: clock.clone(),
            rng: Arc::new(SeededRng::new(args.seed.wrapping_add(restarts))),
            metrics: metrics.clone(),
        };
        // Arm the crash switch for this instance: the next scheduled point,
        // or `crash_every` more records, whichever comes first.
        let consumed = switch.consumed.load(Ordering::SeqCst);
        while crash_at.first().is_some_and(|at| *at <= consumed) {
            crash_at.remove(0);
        }
        let mut threshold = crash_at.first().copied().unwrap_or(u64::MAX);
        if args.crash_every > 0 {
            threshold = threshold.min(consumed + args.crash_every);
        }
        switch.threshold.store(threshold, Ordering::SeqCst);
        let transfer_in: Vec<Box<dyn LogConsumer>> = (0..args.transfer_loops.max(1))
            .map(|_| {
                Box::new(CrashingConsumer {
                    inner: log.consumer(&cfg.groups.to_redis, &topics.to_redis),
                    switch: switch.clone(),
                }) as Box<dyn LogConsumer>
            })
            .collect();
        let persist_in = Box::new(log.consumer(&cfg.groups.to_mongo, &topics.to_mongo));
        let instance_cfg = cfg.clone();
        let mut handle = tokio::spawn(async move {
            service::run(wiring, transfer_in, persist_in, &instance_cfg, rx).await
        });
        loop {
            tokio::select! {
                res = &mut handle => {
                    res??;
                    anyhow::bail!("the service stopped on its own");
                }
                _ = switch.fired.notified() => {}
                _ = clock.sleep(Duration::from_millis(5)) => {}
            }
            if switch.tripped() {
                // The service has had its N records and gets no more. It
                // dies at a random moment within the next second — maybe
                // mid-batch, maybe after a commit or two — and everything
                // in flight or uncommitted is lost with it.
                let delay = Duration::from_millis(crash_rng.random_range(0..1000));
                tokio::select! {
                    _ = &mut handle => {}
                    _ = clock.sleep(delay) => {}
                }
                handle.abort();
                let _ = handle.await;
                restarts += 1;
                continue 'service;
            }
            let now = clock.monotonic_us();
            if args.progress && now - last_progress >= 1_000_000 {
                last_progress = now;
                let persisted = Metrics::get(&metrics.msgs_persisted);
                eprintln!(
                    "demo: {:>5.1}s  consumed {:>9}/{} records  persisted {:>9} msgs  restarts {}",
                    (now - start_us) as f64 / 1e6,
                    Metrics::get(&metrics.records_in),
                    total_records,
                    persisted,
                    restarts
                );
            }
            let done = produced_all.load(Ordering::SeqCst)
                && log.lag(&cfg.groups.to_redis, &topics.to_redis) == 0
                && log.lag(&cfg.groups.to_mongo, &topics.to_mongo) == 0;
            if done {
                end_us = now;
                end_usage = clock.usage();
                let _ = tx.send(true);
                handle.await??;
                break 'service;
            }
        }
    }
    producer.await??;
    let elapsed_s = (end_us - start_us) as f64 / 1e6;

    let t_audit = clock.monotonic_us();
    let (hist, misplaced) = {
        let mut eng = engine.lock();
        let dump = history::dump(&mut eng, clock.now_ms());
        drop(eng);
        history::collect(&log, &topics, &store, &dump)
    };
    let report = check::check(&hist);
    let audit_s = (clock.monotonic_us() - t_audit) as f64 / 1e6;

    let mut lat: Vec<u64> = produced_us
        .iter()
        .zip(persisted_us.iter())
        .filter_map(|(p, q)| {
            let (p, q) = (p.load(Ordering::Relaxed), q.load(Ordering::Relaxed));
            (p > 0 && q > 0).then(|| q.saturating_sub(p))
        })
        .collect();
    lat.sort_unstable();
    let used = start_usage.zip(end_usage);
    let service_cpu_s = used.map(|(a, b)| b.cpu_us().saturating_sub(a.cpu_us()) as f64 / 1e6);
    let service_sys_s = used.map(|(a, b)| b.sys_us.saturating_sub(a.sys_us) as f64 / 1e6);
    let resident_growth_mb = used
        .and_then(|(a, b)| b.resident_bytes.zip(a.resident_bytes))
        .map(|(b, a)| (b as f64 - a as f64) / (1u64 << 20) as f64);
    Ok(DemoOutcome {
        msgs_per_s: args.messages as f64 / elapsed_s.max(1e-9),
        service_cpu_s,
        service_sys_s,
        resident_growth_mb,
        cpu_us_per_msg: service_cpu_s.map(|cpu| cpu * 1e6 / (args.messages.max(1) as f64)),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        report,
        misplaced,
        records: total_records,
        producer_duplicates: work.duplicates,
        restarts,
        elapsed_s,
        metrics: metrics.snapshot(),
        generate_s,
        audit_s,
    })
}

/// The human summary of a run.
pub fn summary(args: &DemoArgs, o: &DemoOutcome) -> String {
    let r = &o.report;
    let metric = |name: &str| o.metric(name);
    format!(
        "msgtransfer demo: seed {}, {} messages in {} conversations, {} partitions\n\
         \x20 workload  {} records ({} producer duplicates), generated in {:.1}s\n\
         \x20 service   {:.2}s, {:.0} msg/s, {}produce->persisted p50 {:.1} ms, p99 {:.1} ms, {} restarts\n\
         \x20 effects   {} messages as {} units; stored {} / persisted {} / cached {}; pushed {} of {} messages; dedup hits {}; dead letters {}; retries {}\n\
         \x20 audit     {} seq conflicts, {} duplicates, {} order violations, {} lost, {} phantoms, {} misplaced, {} read seqs above max, {} behind ({:.1}s)\n\
         \x20 verdict   {}",
        args.seed,
        args.messages,
        args.conversations,
        args.partitions,
        o.records,
        o.producer_duplicates,
        o.generate_s,
        o.elapsed_s,
        o.msgs_per_s,
        o.service_cpu_s
            .zip(o.cpu_us_per_msg)
            .map_or(String::new(), |(cpu, per_msg)| format!(
                "{cpu:.1} CPU s ({per_msg:.1} us/msg, {:.1} s in the kernel{}), ",
                o.service_sys_s.unwrap_or(0.0),
                o.resident_growth_mb
                    .map_or(String::new(), |mb| format!(", +{mb:.0} MiB resident"))
            )),
        o.p50_ms,
        o.p99_ms,
        o.restarts,
        r.messages,
        r.units,
        r.stored,
        r.persisted,
        r.cached,
        r.pushed,
        r.messages,
        metric("dedup_hits"),
        metric("dlq_records"),
        metric("retries"),
        r.seq_conflicts,
        r.duplicates,
        r.order_violations,
        r.lost,
        r.phantoms,
        o.misplaced,
        r.read_seq_above_max,
        r.read_seq_behind,
        o.audit_s,
        if o.clean() {
            "CLEAN".to_string()
        } else {
            format!(
                "ANOMALIES, e.g. {:?}",
                r.examples.iter().take(5).collect::<Vec<_>>()
            )
        }
    )
}

/// The final JSON line of a run.
pub fn json_line(args: &DemoArgs, o: &DemoOutcome) -> String {
    let r = &o.report;
    let metric = |name: &str| o.metric(name);
    serde_json::json!({
        "seed": args.seed,
        "messages": r.messages,
        "units": r.units,
        "records": o.records,
        "producer_duplicates": o.producer_duplicates,
        "stored": r.stored,
        "persisted": r.persisted,
        "cached": r.cached,
        "pushed": r.pushed,
        "duplicates": r.duplicates,
        "seq_conflicts": r.seq_conflicts,
        "order_violations": r.order_violations,
        "lost": r.lost,
        "phantoms": r.phantoms,
        "misplaced": o.misplaced,
        "read_seq_above_max": r.read_seq_above_max,
        "read_seq_behind": r.read_seq_behind,
        "dedup_hits": metric("dedup_hits"),
        "dead_letters": metric("dlq_records"),
        "restarts": o.restarts,
        "elapsed_s": (o.elapsed_s * 1000.0).round() / 1000.0,
        "msgs_per_s": o.msgs_per_s.round(),
        "service_cpu_s": o.service_cpu_s.map(|c| (c * 100.0).round() / 100.0),
        "service_sys_s": o.service_sys_s.map(|c| (c * 100.0).round() / 100.0),
        "resident_growth_mb": o.resident_growth_mb.map(f64::round),
        "cpu_us_per_msg": o.cpu_us_per_msg.map(|c| (c * 10.0).round() / 10.0),
        "p50_ms": (o.p50_ms * 10.0).round() / 10.0,
        "p99_ms": (o.p99_ms * 10.0).round() / 10.0,
        "clean": o.clean(),
        "transfer_batches": metric("transfer_batches"),
        "persist_batches": metric("persist_batches"),
    })
    .to_string()
}
