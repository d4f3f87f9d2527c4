//! One simulation run: the hosts, a swarm-style fault schedule drawn from
//! the seed, a safety phase with faults, a liveness phase without, and the
//! check of the recorded history.
//!
//! Hosts on turmoil's network: `kafka`, `redis`, `mongo` (state kept across
//! their restarts, like disks), two service instances `svc1` and `svc2`
//! (the very library `main` runs, wired to turmoil sockets; one consumer
//! group, so crashes and restarts rebalance partitions between them), and
//! the `producer` client sending OpenIM traffic with retries that duplicate
//! records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use msgtransfer::check::{self, History, Report};
use msgtransfer::demo::workload::{WorkloadSpec, generate};
use msgtransfer::embedded::history;
use msgtransfer::embedded::hook::EmbeddedHook;
use msgtransfer::embedded::log::EmbeddedLog;
use msgtransfer::embedded::store::EmbeddedStore;
use msgtransfer::metrics::Metrics;
use msgtransfer::pipeline::retry::Backoff;
use msgtransfer::pipeline::transfer::Topics;
use msgtransfer::ports::{LogConsumer, LogProducer, OutRecord, SeededRng};
use msgtransfer::service::{self, ServiceConfig, Wiring};
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::sync::watch;

use crate::common::{EPOCH_MS, Faults, Rates, SimClock, sleep};
use crate::kafka::{self, Broker, ClientConfig, RemoteConsumer, RemoteProducer};
use crate::mongo::{self, MongoHost, RemoteStore};
use crate::redis::{self, RedisHost, SimRedis};

/// The service instances.
const SERVICES: [&str; 2] = ["svc1", "svc2"];
/// The backends a service talks to.
const BACKENDS: [&str; 3] = ["kafka", "redis", "mongo"];

/// What to simulate, apart from the seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Distinct messages the producer sends.
    pub messages: u64,
    /// Most conversations they are spread over (each seed draws how many,
    /// from 1: few conversations make hot ones).
    pub conversations: u64,
    /// Partitions per topic.
    pub partitions: i32,
    /// Length of the safety phase (faults on), simulated.
    pub safety: Duration,
    /// How long the liveness phase may take to drain, simulated.
    pub liveness: Duration,
    /// Print every fault as it is injected.
    pub trace: bool,
    /// A known weakness put back on purpose (the simulation must catch it).
    pub mutant: Option<Mutant>,
}

/// Known weaknesses of OpenIM's MsgTransfer, one switch each. A sweep with a
/// mutant on must find anomalies; otherwise the simulation is not looking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mutant {
    /// The allocator hands out seqs without waiting for the replica (no
    /// failover fence), as OpenIM does.
    NoFence,
    /// A failed step is not retried and the batch's offsets are committed
    /// anyway, as OpenIM commits the last record of a batch regardless.
    CommitRegardless,
    /// No dedup: a redelivered message gets a new seq.
    NoDedup,
    /// A conversation batch with more than 100 stored messages is dropped.
    #[value(name = "drop-over-100")]
    DropOver100,
    /// Mongo read seqs raised by reading the value and then writing the
    /// new one if higher (OpenIM's `SetUserReadSeq`), so concurrent raises
    /// can move a read seq backwards.
    ReadThenWrite,
    /// Dedup kept in Redis alone, without the ledger: after Redis loses
    /// its data a redelivered message gets a second seq.
    NoLedger,
}

impl Options {
    /// 150 messages in 8 conversations, the defaults otherwise: the size
    /// of the simulator's own `cargo test` checks, where a seed runs in
    /// well under a second.
    pub fn small() -> Self {
        Self {
            messages: 150,
            conversations: 8,
            ..Self::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            messages: 300,
            conversations: 12,
            partitions: 4,
            safety: Duration::from_secs(20),
            liveness: Duration::from_secs(120),
            trace: false,
            mutant: None,
        }
    }
}

/// A fault kind the schedule can draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A service cut off from one backend for a while.
    Partition,
    /// A service's messages to one backend held back, then released (a
    /// latency spike).
    Hold,
    /// A service crashed (in-flight work lost), restarted later.
    Crash,
    /// A service restarted at once.
    Bounce,
    /// Redis replica promoted, unreplicated writes lost.
    Failover,
    /// Redis loses everything, primary and replica.
    RedisWipe,
    /// Redis replication link cut for a while.
    ReplicationCut,
    /// Kafka acknowledgements lost after the append.
    KafkaLostAcks,
    /// Mongo answers lost after the write.
    MongoLostReplies,
    /// Redis replies lost after the command ran.
    RedisLostReplies,
}

/// Every fault kind.
pub const KINDS: [Kind; 10] = [
    Kind::Partition,
    Kind::Hold,
    Kind::Crash,
    Kind::Bounce,
    Kind::Failover,
    Kind::RedisWipe,
    Kind::ReplicationCut,
    Kind::KafkaLostAcks,
    Kind::MongoLostReplies,
    Kind::RedisLostReplies,
];

/// One fault as a schedule (or a proptest strategy) states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    /// What.
    pub kind: Kind,
    /// When, ms into the safety phase.
    pub at_ms: u64,
    /// How long it lasts (partitions, holds, crashes, cut replication), or
    /// for lost answers the rate in units of 1/40000 (so 50..6000 is
    /// 0.1%..15%).
    pub span_ms: u64,
    /// Which service (index into the service hosts).
    pub service: usize,
    /// Which backend (index into kafka, redis, mongo).
    pub backend: usize,
}

impl Kind {
    /// The kind's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::Hold => "hold",
            Kind::Crash => "crash",
            Kind::Bounce => "bounce",
            Kind::Failover => "failover",
            Kind::RedisWipe => "redis-wipe",
            Kind::ReplicationCut => "replication-cut",
            Kind::KafkaLostAcks => "kafka-lost-acks",
            Kind::MongoLostReplies => "mongo-lost-replies",
            Kind::RedisLostReplies => "redis-lost-replies",
        }
    }
}

impl std::fmt::Display for FaultSpec {
    /// `kind@at+span/service/backend`, e.g. `partition@1200+800/svc1/redis`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}+{}/{}/{}",
            self.kind.name(),
            self.at_ms,
            self.span_ms,
            SERVICES[self.service % SERVICES.len()],
            BACKENDS[self.backend % BACKENDS.len()]
        )
    }
}

impl std::str::FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("fault {s:?}: expected kind@at+span/service/backend");
        let (kind, rest) = s.split_once('@').ok_or_else(bad)?;
        let (at, rest) = rest.split_once('+').ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let span = parts.next().ok_or_else(bad)?;
        let service = parts.next().ok_or_else(bad)?;
        let backend = parts.next().ok_or_else(bad)?;
        Ok(FaultSpec {
            kind: *KINDS
                .iter()
                .find(|k| k.name() == kind)
                .ok_or_else(|| format!("fault {s:?}: unknown kind {kind:?}"))?,
            at_ms: at.parse().map_err(|_| bad())?,
            span_ms: span.parse().map_err(|_| bad())?,
            service: SERVICES
                .iter()
                .position(|x| *x == service)
                .ok_or_else(|| format!("fault {s:?}: unknown service {service:?}"))?,
            backend: BACKENDS
                .iter()
                .position(|x| *x == backend)
                .ok_or_else(|| format!("fault {s:?}: unknown backend {backend:?}"))?,
        })
    }
}

/// One step of a plan.
#[derive(Clone, Debug)]
pub enum Event {
    /// Cut a service off from a backend.
    Partition(&'static str, &'static str),
    /// Heal that cut.
    Repair(&'static str, &'static str),
    /// Hold a service's messages to a backend.
    Hold(&'static str, &'static str),
    /// Deliver what was held.
    Release(&'static str, &'static str),
    /// Crash a service.
    Crash(&'static str),
    /// Start a crashed service again.
    Restart(&'static str),
    /// Restart a running service.
    Bounce(&'static str),
    /// Promote the Redis replica.
    Failover,
    /// Lose all of Redis.
    Wipe,
    /// Cut Redis replication.
    CutReplication,
    /// Restore Redis replication.
    RestoreReplication,
}

impl Event {
    fn kind(&self) -> Option<&'static str> {
        Some(match self {
            Event::Partition(..) => "partition",
            Event::Hold(..) => "hold",
            Event::Crash(_) => "crash",
            Event::Bounce(_) => "bounce",
            Event::Failover => "redis_failover",
            Event::Wipe => "redis_wipe",
            Event::CutReplication => "replication_cut",
            _ => return None,
        })
    }
}

/// A fault plan: timed events, and lost-answer rates for the safety phase.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Events in time order.
    pub events: Vec<(Duration, Event)>,
    /// Lost-answer rates while faults are on.
    pub rates: Rates,
}

impl Plan {
    /// The plan of `faults`.
    pub fn from_faults(faults: &[FaultSpec]) -> Self {
        let mut plan = Plan::default();
        for f in faults {
            let t = Duration::from_millis(f.at_ms);
            let end = t + Duration::from_millis(f.span_ms);
            let s = SERVICES[f.service % SERVICES.len()];
            let b = BACKENDS[f.backend % BACKENDS.len()];
            let rate = f.span_ms as f64 / 40_000.0;
            let ev = &mut plan.events;
            let rates = &mut plan.rates;
            match f.kind {
                Kind::Partition => {
                    ev.push((t, Event::Partition(s, b)));
                    ev.push((end, Event::Repair(s, b)));
                }
                Kind::Hold => {
                    ev.push((t, Event::Hold(s, b)));
                    ev.push((end, Event::Release(s, b)));
                }
                Kind::Crash => {
                    ev.push((t, Event::Crash(s)));
                    ev.push((end, Event::Restart(s)));
                }
                Kind::Bounce => ev.push((t, Event::Bounce(s))),
                Kind::Failover => ev.push((t, Event::Failover)),
                Kind::RedisWipe => ev.push((t, Event::Wipe)),
                Kind::ReplicationCut => {
                    ev.push((t, Event::CutReplication));
                    ev.push((end, Event::RestoreReplication));
                }
                Kind::KafkaLostAcks => rates.kafka_lost_ack = rates.kafka_lost_ack.max(rate),
                Kind::MongoLostReplies => rates.mongo_lost_reply = rates.mongo_lost_reply.max(rate),
                Kind::RedisLostReplies => {
                    rates.redis_lost_reply = rates.redis_lost_reply.max(rate / 3.0)
                }
            }
        }
        // Stable: by time, then in the order stated.
        plan.events.sort_by_key(|(t, _)| *t);
        plan
    }
}

/// Draws the faults of `seed`, swarm style: each fault kind is switched on
/// or off for the whole seed, and the ones on get their own counts, times,
/// lengths and rates — so some seeds hammer one weakness and others mix
/// many.
pub fn draw_faults(seed: u64, opts: &Options) -> Vec<FaultSpec> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut on: Vec<Kind> = KINDS
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.5))
        .collect();
    if on.is_empty() {
        on.push(KINDS[rng.random_range(0..KINDS.len())]);
    }
    let safety_ms = opts.safety.as_millis() as u64;
    let mut faults = Vec::new();
    for kind in on {
        for _ in 0..rng.random_range(1..=4) {
            faults.push(FaultSpec {
                kind,
                at_ms: rng.random_range(safety_ms / 20..safety_ms),
                span_ms: rng.random_range(50..6000),
                service: rng.random_range(0..SERVICES.len()),
                backend: rng.random_range(0..BACKENDS.len()),
            });
        }
    }
    faults
}

/// What one seed did and found.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// The checker's report.
    pub report: Report,
    /// Slots and cache keys whose place disagrees with their seq.
    pub misplaced: u64,
    /// Whether every input was consumed, pushed and persisted after the
    /// faults stopped.
    pub drained: bool,
    /// Digest of the recorded history and fault trace: equal for equal runs.
    pub digest: u64,
}

impl Outcome {
    /// Anomalies of every kind, a missed drain included.
    pub fn anomalies(&self) -> u64 {
        self.report.anomalies() + self.misplaced + u64::from(!self.drained)
    }

    /// Anomalies by kind (only the non-zero ones).
    pub fn anomalies_by_kind(&self) -> BTreeMap<&'static str, u64> {
        let r = &self.report;
        [
            ("seq_conflicts", r.seq_conflicts),
            ("duplicates", r.duplicates),
            ("order_violations", r.order_violations),
            ("lost", r.lost),
            ("phantoms", r.phantoms),
            ("read_seq_above_max", r.read_seq_above_max),
            ("read_seq_behind", r.read_seq_behind),
            ("misplaced", self.misplaced),
            ("not_drained", u64::from(!self.drained)),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// Everything the hosts share (kept outside their software, so it survives
/// crashes like a disk would).
struct World {
    seed: u64,
    broker: Arc<Broker>,
    mongo: Arc<MongoHost>,
    redis: Arc<RedisHost>,
    hook: EmbeddedHook,
    cfg: ServiceConfig,
    mutant: Option<Mutant>,
    /// Producer ids handed out (one per process incarnation).
    next_producer: AtomicU64,
    producer_done: AtomicBool,
}

fn kafka_client() -> ClientConfig {
    ClientConfig {
        addr: format!("kafka:{}", kafka::PORT),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1000),
        delivery_timeout: Duration::from_secs(5),
    }
}

/// The service as the simulation runs it: OpenIM's defaults, with the
/// allocator fenced by one replica (`WAIT 1`) and shorter waits so a run
/// covers more events per simulated second.
fn service_config(mutant: Option<Mutant>) -> ServiceConfig {
    let mut cfg = ServiceConfig::default();
    cfg.transfer.cache.wait_replicas = if mutant == Some(Mutant::NoFence) {
        0
    } else {
        1
    };
    let weak = &mut cfg.transfer.weaknesses;
    match mutant {
        Some(Mutant::CommitRegardless) => weak.give_up_on_failure = true,
        Some(Mutant::NoDedup) => weak.no_dedup = true,
        Some(Mutant::DropOver100) => weak.drop_over_100 = true,
        Some(Mutant::NoLedger) => cfg.transfer.cache.ledger = false,
        Some(Mutant::NoFence | Mutant::ReadThenWrite) | None => {}
    }
    cfg.transfer.cache.wait_timeout_ms = 200;
    let backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(500),
    };
    cfg.transfer.backoff = backoff.clone();
    for l in [&mut cfg.transfer_loop, &mut cfg.persist_loop] {
        l.backoff = backoff.clone();
        l.commit_interval = Duration::from_millis(100);
        l.drain_timeout = Duration::from_secs(2);
    }
    cfg
}

/// One service incarnation: the library's `service::run` over turmoil
/// sockets.
async fn service_host(world: Arc<World>) -> turmoil::Result {
    let id = world.next_producer.fetch_add(1, Ordering::SeqCst);
    let kcfg = kafka_client();
    let producer: Arc<dyn LogProducer> = Arc::new(RemoteProducer::spawn(kcfg.clone(), id));
    let mut store = RemoteStore::spawn(
        format!("mongo:{}", mongo::PORT),
        Duration::from_millis(500),
        Duration::from_millis(1000),
    );
    if world.mutant == Some(Mutant::ReadThenWrite) {
        store = store.read_then_write();
    }
    let store = Arc::new(store);
    let wiring = Wiring {
        redis: SimRedis::new(
            format!("redis:{}", redis::PORT),
            Duration::from_millis(1000),
        ),
        store,
        producer,
        hook: Arc::new(world.hook.clone()),
        clock: Arc::new(SimClock),
        rng: Arc::new(SeededRng::new(world.seed ^ (id << 32))),
        metrics: Arc::new(Metrics::default()),
    };
    let groups = &world.cfg.groups;
    let topics = &world.cfg.transfer.topics;
    let transfer_in: Vec<Box<dyn LogConsumer>> = vec![Box::new(RemoteConsumer::spawn(
        &kcfg,
        &groups.to_redis,
        &topics.to_redis,
    ))];
    let persist_in = Box::new(RemoteConsumer::spawn(
        &kcfg,
        &groups.to_mongo,
        &topics.to_mongo,
    ));
    let (_keep, shutdown) = watch::channel(false);
    service::run(wiring, transfer_in, persist_in, &world.cfg, shutdown)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The OpenIM side: sends the workload in order, `chunk` records at a time,
/// resending what failed (which duplicates records whose outcome was
/// unknown, as a retrying producer does).
async fn producer_client(
    world: Arc<World>,
    records: Vec<OutRecord>,
    chunk: usize,
    pace: Duration,
) -> turmoil::Result {
    let id = world.next_producer.fetch_add(1, Ordering::SeqCst);
    let producer = RemoteProducer::spawn(kafka_client(), id);
    for chunk in records.chunks(chunk) {
        let mut pending: Vec<OutRecord> = chunk.to_vec();
        while !pending.is_empty() {
            let acks: Vec<_> = pending.iter().map(|r| producer.send(r.clone())).collect();
            let mut failed = Vec::new();
            for (r, ack) in pending.into_iter().zip(acks) {
                if ack.await.is_err() {
                    failed.push(r);
                }
            }
            if !failed.is_empty() {
                sleep(Duration::from_millis(100)).await;
            }
            pending = failed;
        }
        sleep(pace).await;
    }
    world.producer_done.store(true, Ordering::SeqCst);
    Ok(())
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

fn digest(h: &History, trace: &[String]) -> u64 {
    let mut d = 0xcbf2_9ce4_8422_2325u64;
    for line in trace {
        fnv(&mut d, line.as_bytes());
    }
    for i in &h.inputs {
        fnv(&mut d, i.client_msg_id.as_bytes());
    }
    for log in [&h.pushes, &h.persistence_records] {
        for p in log {
            for s in p {
                fnv(&mut d, s.client_msg_id.as_bytes());
                fnv(&mut d, &s.seq.to_le_bytes());
            }
        }
    }
    for s in &h.persisted {
        fnv(&mut d, s.client_msg_id.as_bytes());
        fnv(&mut d, &s.seq.to_le_bytes());
    }
    d
}

/// Held for the length of a run (see [`align_task_ids`]).
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Task ids are a multiple of this at the start of every run.
const TASK_ID_ALIGN: u64 = 64;

/// Puts tokio's task-id counter at a multiple of [`TASK_ID_ALIGN`].
///
/// tokio numbers tasks from one counter for the whole process, and when a
/// runtime is dropped (turmoil crashing a host) it shuts the runtime's tasks
/// down shard by shard, a task's shard being its id modulo the shard count
/// (4 for a current-thread runtime). The order in which a crashed host's
/// sockets close — and so the simulated network after a crash — would then
/// depend on how many tasks earlier runs in the same process had spawned,
/// and a seed from a sweep would not replay alone. Spending ids up to the
/// next multiple makes every run start from the same residue.
fn align_task_ids() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a bare current-thread runtime builds");
    rt.block_on(async {
        loop {
            let id = tokio::spawn(async { tokio::task::id() })
                .await
                .expect("an empty task completes");
            let n: u64 = id.to_string().parse().expect("task ids print as numbers");
            if n % TASK_ID_ALIGN == TASK_ID_ALIGN - 1 {
                break;
            }
        }
    });
}

/// Runs seed `seed` with the faults it draws.
pub fn run(seed: u64, opts: &Options) -> anyhow::Result<Outcome> {
    run_faults(seed, opts, &draw_faults(seed, opts))
}

/// Runs seed `seed` (workload, network, timing) with the given faults
/// instead of the ones it would draw: what proptest varies and shrinks.
pub fn run_faults(seed: u64, opts: &Options, faults: &[FaultSpec]) -> anyhow::Result<Outcome> {
    // One run at a time in a process: the task-id counter below is shared,
    // so a run on another thread would move it in the middle of this one.
    let _alone = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    align_task_ids();
    let plan = Plan::from_faults(faults);
    // The environment has its own stream, so the same seed gives the same
    // workload and network whatever the faults are.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0e4f_1a2b_3c4d_5e6f);
    let faults = Arc::new(Faults::new(seed));
    let clock = Arc::new(SimClock);
    let topics = Topics::default();
    let log = EmbeddedLog::new(opts.partitions, kafka::MAX_RECORD_BYTES, clock);
    let store = EmbeddedStore::new().with_read_seq_log();
    let world = Arc::new(World {
        seed,
        broker: Broker::new(log.clone(), faults.clone()),
        mongo: MongoHost::new(store.clone(), faults.clone()),
        redis: RedisHost::new(seed, faults.clone()),
        hook: EmbeddedHook::default(),
        cfg: service_config(opts.mutant),
        mutant: opts.mutant,
        next_producer: AtomicU64::new(1),
        producer_done: AtomicBool::new(false),
    });
    // The workload is swarm-drawn too: how many conversations (few make
    // hot ones, with batches over 100), and whether the producer sends
    // steadily over the safety phase or all at once.
    let most = opts.conversations.max(1);
    let conversations = if rng.random_bool(0.25) {
        1
    } else {
        rng.random_range(1..=most)
    };
    let burst = rng.random_bool(0.4);
    let workload = generate(&WorkloadSpec {
        messages: opts.messages,
        conversations,
        seed,
        duplicate_rate: rng.random_range(0.0..0.1),
        topic: topics.to_redis.clone(),
        start_ms: EPOCH_MS as i64,
    });
    // Steady traffic is one record at a time, so there is always some in
    // flight when a fault strikes.
    let chunk = if burst { 128 } else { 1 };
    let chunks = workload.records.len().div_ceil(chunk).max(1) as u64;
    let pace = if burst {
        Duration::ZERO
    } else {
        Duration::from_millis(opts.safety.as_millis() as u64 / chunks)
    };

    let mut sim = turmoil::Builder::new()
        .simulation_duration(opts.safety + opts.liveness + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(0))
        .max_message_latency(Duration::from_millis(rng.random_range(1..20)))
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .rng_seed(rng.random())
        .enable_random_order()
        .build();

    let w = world.clone();
    sim.host("kafka", move || {
        let b = w.broker.clone();
        async move { Ok(b.serve(Duration::from_secs(2)).await?) }
    });
    let w = world.clone();
    sim.host("mongo", move || {
        let m = w.mongo.clone();
        async move { Ok(m.serve(Duration::from_secs(3600)).await?) }
    });
    let w = world.clone();
    let interval = Duration::from_millis(rng.random_range(5..300));
    sim.host("redis", move || {
        let r = w.redis.clone();
        async move { Ok(r.serve(interval).await?) }
    });
    for name in SERVICES {
        let w = world.clone();
        sim.host(name, move || service_host(w.clone()));
    }
    sim.client(
        "producer",
        producer_client(world.clone(), workload.records, chunk, pace),
    );

    let mut trace: Vec<String> = Vec::new();
    let mut events = plan.events.into_iter().peekable();
    let mut crashed: Vec<&'static str> = Vec::new();
    faults.set(plan.rates);
    for (name, rate) in [
        ("kafka_lost_acks", plan.rates.kafka_lost_ack),
        ("mongo_lost_replies", plan.rates.mongo_lost_reply),
        ("redis_lost_replies", plan.rates.redis_lost_reply),
    ] {
        if rate > 0.0 {
            trace.push(format!("0 ms: {name} at {rate:.3}"));
        }
    }
    let mut calm = false;
    let mut drained = false;
    let deadline = opts.safety + opts.liveness;
    loop {
        if let Err(e) = sim.step() {
            anyhow::bail!("seed {seed}: a host failed: {e}");
        }
        let now = sim.elapsed();
        while events.peek().is_some_and(|(t, _)| *t <= now) {
            let Some((_, ev)) = events.next() else { break };
            if calm {
                continue;
            }
            apply(&mut sim, &world, &ev, &mut crashed);
            if let Some(kind) = ev.kind() {
                faults.count(kind);
            }
            trace.push(format!("{} ms: {ev:?}", now.as_millis()));
        }
        if !calm && now >= opts.safety {
            // Liveness: every fault healed, every host up.
            calm = true;
            faults.set(Rates::default());
            world.redis.set_link(true);
            for s in SERVICES {
                for b in BACKENDS {
                    sim.repair(s, b);
                    sim.release(s, b);
                }
            }
            for s in crashed.drain(..) {
                sim.bounce(s);
            }
            trace.push(format!("{} ms: faults off", now.as_millis()));
        }
        if calm
            && world.producer_done.load(Ordering::SeqCst)
            && log.lag(&world.cfg.groups.to_redis, &topics.to_redis) == 0
            && log.lag(&world.cfg.groups.to_mongo, &topics.to_mongo) == 0
        {
            drained = true;
            break;
        }
        if now >= deadline {
            break;
        }
    }
    if opts.trace {
        for line in &trace {
            eprintln!("[seed {seed}] {line}");
        }
    }
    let now_ms = (EPOCH_MS + sim.elapsed().as_millis() as u64) as i64;
    let dump = world.redis.dump(now_ms);
    let (mut h, misplaced) = history::collect(&log, &topics, &store, &dump);
    // A failover or a lost reply can take cache entries with it; what is
    // in the cache is still checked.
    h.cache_partial = true;
    let report = check::check(&h);
    Ok(Outcome {
        seed,
        sim_ms: sim.elapsed().as_millis() as u64,
        faults: faults
            .injected()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        digest: digest(&h, &trace),
        report,
        misplaced,
        drained,
    })
}

fn apply(sim: &mut turmoil::Sim<'_>, world: &World, ev: &Event, crashed: &mut Vec<&'static str>) {
    match ev {
        Event::Partition(a, b) => sim.partition(*a, *b),
        Event::Repair(a, b) => sim.repair(*a, *b),
        Event::Hold(a, b) => sim.hold(*a, *b),
        Event::Release(a, b) => sim.release(*a, *b),
        Event::Crash(s) => {
            if !crashed.contains(s) {
                sim.crash(*s);
                crashed.push(s);
            }
        }
        Event::Restart(s) => {
            if let Some(i) = crashed.iter().position(|c| c == s) {
                crashed.remove(i);
                sim.bounce(*s);
            }
        }
        Event::Bounce(s) => {
            if !crashed.contains(s) {
                sim.bounce(*s);
            }
        }
        Event::Failover => world.redis.failover(),
        Event::Wipe => world.redis.wipe(),
        Event::CutReplication => world.redis.set_link(false),
        Event::RestoreReplication => world.redis.set_link(true),
    }
}
