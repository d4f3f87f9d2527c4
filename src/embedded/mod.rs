//! In-process backends: a partitioned log, a Redis model, a document store
//! and a conversation hook.
//!
//! They serve two purposes: the zero-setup `demo`, and fast deterministic
//! tests of the whole pipeline (including crashes, which are just dropped
//! service tasks — the backends, like real servers, live on). Each one keeps
//! the semantics the service relies on and nothing more; given the same
//! sequence of calls they behave the same way every time. A [`FaultPlan`]
//! can make them fail, before or after doing the work, to exercise retries.

pub mod history;
pub mod hook;
pub mod log;
pub mod redis;
pub mod store;

use parking_lot::Mutex;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// When an injected failure happens relative to the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request is lost: nothing happened.
    Before,
    /// The work happened but the answer is lost: the caller cannot know.
    After,
}

/// Seeded failure rates for the embedded backends.
#[derive(Debug)]
pub struct FaultPlan {
    rng: Mutex<ChaCha8Rng>,
    /// Probability that a produce fails.
    pub produce_rate: f64,
    /// Probability that a store operation fails.
    pub store_rate: f64,
    /// Probability that a Redis command fails.
    pub redis_rate: f64,
}

impl FaultPlan {
    /// A plan drawing from `seed` with the given failure probabilities.
    pub fn new(seed: u64, produce_rate: f64, store_rate: f64, redis_rate: f64) -> Self {
        Self {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            produce_rate,
            store_rate,
            redis_rate,
        }
    }

    fn draw(&self, rate: f64) -> Option<Fault> {
        if rate <= 0.0 {
            return None;
        }
        let mut rng = self.rng.lock();
        if rng.random_bool(rate.min(1.0)) {
            Some(if rng.random_bool(0.5) {
                Fault::Before
            } else {
                Fault::After
            })
        } else {
            None
        }
    }

    /// Whether (and how) the next produce fails.
    pub fn produce(&self) -> Option<Fault> {
        self.draw(self.produce_rate)
    }

    /// Whether (and how) the next store operation fails.
    pub fn store(&self) -> Option<Fault> {
        self.draw(self.store_rate)
    }

    /// Whether (and how) the next Redis command fails.
    pub fn redis(&self) -> Option<Fault> {
        self.draw(self.redis_rate)
    }

    /// A fault hook for [`redis::EmbeddedRedis::with_fault_hook`] that fails
    /// commands as this plan draws.
    pub fn redis_hook(self: &std::sync::Arc<Self>) -> redis::FaultHook {
        let plan = self.clone();
        std::sync::Arc::new(move |_cmd: &[u8]| {
            plan.redis().map(|f| match f {
                Fault::Before => redis::FaultKind::ErrorBeforeExecute,
                Fault::After => redis::FaultKind::ErrorAfterExecute,
            })
        })
    }
}

/// The transfer stage's dependencies on fresh embedded backends of their
/// own: a one-partition log whose producer refuses records over
/// `max_record_bytes`, an empty Redis and store, a hook that records, and
/// an RNG seeded with `seed`. For tests and fuzz targets that drive the
/// handler directly.
pub fn transfer_deps(
    clock: crate::ports::SharedClock,
    seed: u64,
    max_record_bytes: usize,
) -> crate::pipeline::transfer::TransferDeps<redis::EmbeddedRedis> {
    let log = log::EmbeddedLog::new(1, max_record_bytes, clock.clone());
    crate::pipeline::transfer::TransferDeps {
        redis: redis::EmbeddedRedis::new(redis::shared_engine(seed), clock.clone()),
        store: std::sync::Arc::new(store::EmbeddedStore::new()),
        producer: std::sync::Arc::new(log.producer()),
        hook: std::sync::Arc::new(hook::EmbeddedHook::default()),
        clock,
        rng: std::sync::Arc::new(crate::ports::SeededRng::new(seed)),
        metrics: std::sync::Arc::new(crate::metrics::Metrics::default()),
    }
}
