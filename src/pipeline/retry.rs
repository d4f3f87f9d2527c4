//! Bounded exponential backoff for transient backend failures.
//!
//! The pipeline never skips a record because a backend failed: it waits and
//! tries again, with delays that double up to a ceiling and carry a little
//! jitter from the injected RNG, so restarted instances do not retry in step.

use std::time::Duration;

use crate::ports::{Clock, Rng};

/// Backoff settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(2),
        }
    }
}

/// The state of one retry loop.
#[derive(Debug)]
pub struct Retrier {
    cfg: Backoff,
    next: Duration,
    /// Failures so far.
    pub attempts: u32,
}

impl Retrier {
    /// A fresh loop.
    pub fn new(cfg: &Backoff) -> Self {
        Self {
            cfg: cfg.clone(),
            next: cfg.initial,
            attempts: 0,
        }
    }

    /// The delay before the next attempt, with up to 25% jitter.
    pub fn next_delay(&mut self, rng: &dyn Rng) -> Duration {
        self.attempts += 1;
        let base = self.next;
        self.next = (self.next * 2).min(self.cfg.max);
        let quarter = base.as_micros() as u64 / 4;
        let jitter = if quarter == 0 {
            0
        } else {
            rng.next_u64() % quarter
        };
        base + Duration::from_micros(jitter)
    }

    /// Sleeps before the next attempt.
    pub async fn wait(&mut self, clock: &dyn Clock, rng: &dyn Rng) {
        let d = self.next_delay(rng);
        clock.sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::SeededRng;

    #[test]
    fn delays_double_up_to_the_ceiling() {
        let rng = SeededRng::new(1);
        let mut r = Retrier::new(&Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        });
        let d: Vec<Duration> = (0..5).map(|_| r.next_delay(&rng)).collect();
        assert!(d[0] >= Duration::from_millis(10) && d[0] < Duration::from_micros(12_500));
        assert!(d[1] >= Duration::from_millis(20) && d[1] < Duration::from_millis(25));
        assert!(d[3] >= Duration::from_millis(50) && d[3] < Duration::from_micros(62_500));
        assert!(d[4] >= Duration::from_millis(50) && d[4] < Duration::from_micros(62_500));
        assert_eq!(r.attempts, 5);
    }
}
