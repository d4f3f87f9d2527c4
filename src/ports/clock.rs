//! Time, injected.
//!
//! The core never reads the wall clock or sleeps on its own: it asks a
//! [`Clock`]. Production wires [`SystemClock`]; the simulator wires a clock
//! driven by simulated time; tests wire [`ManualClock`]. Keeping time behind
//! this seam is what makes a run replayable from its seed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// A boxed future returned by [`Clock::sleep`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time and of delays.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch. Written into OpenIM's `TIME` field
    /// and used for expiry windows; never assumed to be monotonic across
    /// processes.
    fn now_ms(&self) -> i64;

    /// Microseconds since an arbitrary origin that only moves forward within
    /// one process. Used for latency figures, never stored.
    fn monotonic_us(&self) -> u64;

    /// Completes after `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Sleep;

    /// What this process has used so far, where the clock can tell. Only
    /// for reporting how much work a run took: simulated and manual clocks
    /// answer `None`.
    fn usage(&self) -> Option<ProcessUsage> {
        None
    }
}

/// CPU time and memory the operating system has charged to this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUsage {
    /// CPU time spent in our own code, every thread, µs.
    pub user_us: u64,
    /// CPU time the kernel spent on our behalf (page faults, system calls),
    /// every thread, µs.
    pub sys_us: u64,
    /// Memory resident now, bytes, where the platform can tell.
    pub resident_bytes: Option<u64>,
}

impl ProcessUsage {
    /// CPU time, user and system together, µs.
    pub fn cpu_us(&self) -> u64 {
        self.user_us + self.sys_us
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock: `SystemTime` for wall time, tokio for delays.
///
/// This is the only place in the library allowed to read the wall clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    /// A clock whose monotonic origin is "now".
    #[allow(clippy::disallowed_methods)] // the one sanctioned reader of real time
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned reader of real time
    fn now_ms(&self) -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }

    #[allow(clippy::disallowed_methods)] // the one sanctioned reader of real time
    fn monotonic_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    #[allow(clippy::disallowed_methods)] // the clock is where sleeping is implemented
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }

    fn usage(&self) -> Option<ProcessUsage> {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a whole `rusage` into the pointer it is
        // given and reads nothing from it; a zeroed rusage is a valid value.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: zero-initialised above and filled in by a successful call.
        let usage = unsafe { usage.assume_init() };
        let us = |t: libc::timeval| {
            u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
        };
        Some(ProcessUsage {
            user_us: us(usage.ru_utime),
            sys_us: us(usage.ru_stime),
            resident_bytes: resident_bytes(),
        })
    }
}

/// Resident memory from `/proc/self/statm` (its second field counts pages);
/// `None` where there is no such file.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// A clock that only moves when told to. `sleep` advances it by the
/// requested amount and yields once, so code that backs off still makes
/// progress in tests without real waiting.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
    mono_us: AtomicI64,
}

impl ManualClock {
    /// A manual clock showing `start_ms` milliseconds since the epoch.
    pub fn new(start_ms: i64) -> Self {
        Self {
            now_ms: AtomicI64::new(start_ms),
            mono_us: AtomicI64::new(0),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
        self.mono_us.fetch_add(us, Ordering::SeqCst);
    }

    /// Sets the wall time to `ms`.
    pub fn set_ms(&self, ms: i64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn monotonic_us(&self) -> u64 {
        u64::try_from(self.mono_us.load(Ordering::SeqCst)).unwrap_or(0)
    }

    fn sleep(&self, d: Duration) -> Sleep {
        self.advance(d);
        Box::pin(tokio::task::yield_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_counts_cpu_time_and_a_manual_clock_has_none() {
        let clock = SystemClock::new();
        let cpu_us = || clock.usage().map(|u| u.cpu_us());
        let before = cpu_us().expect("getrusage works on Linux");
        // Burn a few milliseconds of CPU; the compiler may not skip it.
        let mut x = 1u64;
        while cpu_us().unwrap_or(u64::MAX) < before + 20_000 {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        assert!(cpu_us().unwrap() >= before + 20_000);
        assert_eq!(ManualClock::new(0).usage(), None);
    }

    #[test]
    fn the_system_clock_sees_resident_memory_grow() {
        let clock = SystemClock::new();
        let before = clock
            .usage()
            .and_then(|u| u.resident_bytes)
            .expect("Linux has statm");
        // Touch 64 MiB, one byte a page, so every page becomes resident.
        let mut big = vec![0u8; 64 << 20];
        for i in (0..big.len()).step_by(4096) {
            big[i] = 1;
        }
        std::hint::black_box(&big);
        let after = clock.usage().and_then(|u| u.resident_bytes).unwrap();
        assert!(after >= before + (48 << 20), "{before} -> {after}");
    }
}
