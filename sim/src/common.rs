//! What every simulated host shares: simulated time and the fault dials.

use std::collections::BTreeMap;
use std::time::Duration;

use msgtransfer::ports::Clock;
use msgtransfer::ports::clock::Sleep;
use parking_lot::Mutex;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Milliseconds since the Unix epoch at which every simulation starts
/// (2026-01-01), so message times and TTLs are the same on every run.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// The service's clock inside the simulation: turmoil's logical time for the
/// wall clock, the host runtime's paused tokio timer for sleeping.
#[derive(Debug, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        let since = turmoil::since_epoch().unwrap_or(Duration::from_millis(EPOCH_MS));
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }

    fn monotonic_us(&self) -> u64 {
        let e = turmoil::sim_elapsed().unwrap_or_default();
        u64::try_from(e.as_micros()).unwrap_or(u64::MAX)
    }

    #[allow(clippy::disallowed_methods)] // simulated time: turmoil drives the paused timer
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Sleeps on the host's simulated timer.
#[allow(clippy::disallowed_methods)] // simulated time: turmoil drives the paused timer
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await
}

/// Probabilities of the faults the hosts inject themselves, set by the
/// scenario as its schedule moves between phases.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// A produce is appended but its acknowledgement is lost.
    pub kafka_lost_ack: f64,
    /// A Mongo operation is done but its answer is lost.
    pub mongo_lost_reply: f64,
    /// A Redis command is executed but its reply is lost.
    pub redis_lost_reply: f64,
}

/// The dials and the tally of injected faults, shared by the hosts and the
/// scenario driver. Draws come from one seeded RNG, in the (deterministic)
/// order the simulation makes them.
#[derive(Debug)]
pub struct Faults {
    rng: Mutex<ChaCha8Rng>,
    rates: Mutex<Rates>,
    injected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Faults {
    /// Dials at zero, drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0xfa17_5eed)),
            rates: Mutex::new(Rates::default()),
            injected: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets the dials.
    pub fn set(&self, rates: Rates) {
        *self.rates.lock() = rates;
    }

    /// The dials now.
    pub fn rates(&self) -> Rates {
        *self.rates.lock()
    }

    /// Draws whether a fault of probability `pick(rates)` happens now, and
    /// counts it as `kind` if so.
    pub fn roll(&self, kind: &'static str, pick: impl Fn(&Rates) -> f64) -> bool {
        let p = pick(&self.rates.lock());
        if p <= 0.0 {
            return false;
        }
        let hit = self.rng.lock().random_bool(p.min(1.0));
        if hit {
            self.count(kind);
        }
        hit
    }

    /// Counts one injected fault of `kind`.
    pub fn count(&self, kind: &'static str) {
        *self.injected.lock().entry(kind).or_default() += 1;
    }

    /// Injected faults by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.injected.lock().clone()
    }
}
