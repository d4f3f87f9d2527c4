//! Wiring: the two consumer loops over one set of backends.
//!
//! `main` (real backends), the demo (embedded backends) and the simulator
//! (turmoil hosts) all call [`run`]; only the arguments differ.

use std::sync::Arc;

use redis::aio::ConnectionLike;
use tokio::sync::watch;

use crate::pipeline::consumer::{self, ConsumerConfig, LoopDeps, LoopError};
use crate::pipeline::persist::{Persist, PersistDeps};
use crate::pipeline::transfer::{Transfer, TransferConfig};
use crate::ports::LogConsumer;

/// Consumer group IDs (OpenIM's defaults from `kafka.yml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Groups {
    /// Group reading `toRedis`.
    pub to_redis: String,
    /// Group reading `toMongo`.
    pub to_mongo: String,
}

impl Default for Groups {
    fn default() -> Self {
        Self {
            to_redis: "redis".into(),
            to_mongo: "mongo".into(),
        }
    }
}

/// Everything tunable about the service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The transfer stage.
    pub transfer: TransferConfig,
    /// The `toRedis` loop.
    pub transfer_loop: ConsumerConfig,
    /// The `toMongo` loop.
    pub persist_loop: ConsumerConfig,
    /// Consumer groups.
    pub groups: Groups,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        let transfer = TransferConfig::default();
        let transfer_loop = ConsumerConfig {
            dlq_topic: transfer.topics.dlq.clone(),
            ..ConsumerConfig::default()
        };
        let persist_loop = ConsumerConfig {
            max_batch: 1000,
            dlq_topic: transfer.topics.dlq.clone(),
            ..ConsumerConfig::default()
        };
        Self {
            transfer,
            transfer_loop,
            persist_loop,
            groups: Groups::default(),
        }
    }
}

/// The backends one service instance uses: exactly what the transfer stage
/// needs; the persistence stage and the loops take their share of it.
pub use crate::pipeline::transfer::TransferDeps as Wiring;

/// Runs the consumer loops until `shutdown` turns true, then drains them.
///
/// `transfer_in` holds one consumer per transfer loop: each is a member of
/// the `toRedis` group and works on the partitions the group gives it, so
/// several loops spread the transfer stage over cores (and over processes,
/// exactly the same way). `persist_in` feeds the persistence loop.
pub async fn run<C: ConnectionLike + Clone + Send + Sync + 'static>(
    w: Wiring<C>,
    transfer_in: Vec<Box<dyn LogConsumer>>,
    persist_in: Box<dyn LogConsumer>,
    cfg: &ServiceConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), LoopError> {
    let loop_deps = LoopDeps {
        producer: w.producer.clone(),
        clock: w.clock.clone(),
        rng: w.rng.clone(),
        metrics: w.metrics.clone(),
    };
    let persist = Arc::new(Persist::new(
        PersistDeps {
            store: w.store.clone(),
            clock: w.clock.clone(),
            rng: w.rng.clone(),
            metrics: w.metrics.clone(),
        },
        cfg.transfer.backoff.clone(),
        cfg.transfer.limits.clone(),
    ));
    let transfer = Arc::new(Transfer::new(w, cfg.transfer.clone()));
    // One task per loop, so a multi-threaded runtime runs them in parallel.
    // The guards abort every loop if this future is dropped (a crash, in
    // the demo), so no loop outlives its service.
    let mut loops: Vec<AbortOnDrop> = transfer_in
        .into_iter()
        .map(|input| {
            AbortOnDrop(tokio::spawn(consumer::run(
                transfer.clone(),
                input,
                loop_deps.clone(),
                cfg.transfer_loop.clone(),
                shutdown.clone(),
            )))
        })
        .collect();
    loops.push(AbortOnDrop(tokio::spawn(consumer::run(
        persist,
        persist_in,
        loop_deps,
        cfg.persist_loop.clone(),
        shutdown,
    ))));
    let mut result = Ok(());
    for l in loops {
        let r = l.join().await;
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), LoopError>>);

impl AbortOnDrop {
    async fn join(mut self) -> Result<(), LoopError> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) => Err(LoopError::Task(e.to_string())),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
