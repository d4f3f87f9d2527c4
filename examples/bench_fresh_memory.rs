//! What this machine charges for memory a process touches for the first
//! time, the cost behind the demo's cold runs.
//!
//! The 1M-message demo keeps about 1.9 GiB of new state (cached messages,
//! log records, documents), and every page of it is zeroed by the kernel
//! on first touch. On a virtual machine whose host takes back the guest's
//! free memory a few seconds after the guest frees it, that first touch
//! also waits for the host to supply the page, and costs far more than the
//! zeroing. A run started right after another one gets pages the host has
//! not taken back yet. The demo reports the symptom (`service_sys_s`,
//! `resident_growth_mb`); this measures the cause.
//!
//! It maps `--mb` MiB (default 512) of anonymous memory with transparent
//! huge pages, as the binary's allocator does, writes one byte per 4 KiB
//! page, and unmaps it, three times:
//! 1. as the machine is now;
//! 2. at once again: pages the kernel just got back;
//! 3. after `--idle` seconds (default 25) of doing nothing.
//!
//! It prints the seconds per GiB each took, and the same for two threads
//! touching half each after another idle pause (whether the cost spreads
//! over cores). A benchmark, not a test:
//! `cargo run --release --example bench_fresh_memory -- --mb 512 --idle 25`.

use std::time::Duration;

use msgtransfer::ports::clock::{Clock, SystemClock};

const PAGE: usize = 4096;

/// Maps `bytes` of fresh anonymous memory, asks for huge pages, touches
/// every page once and unmaps it. Returns the microseconds the touching took.
fn touch_fresh(clock: &SystemClock, bytes: usize) -> u64 {
    // SAFETY: an anonymous private mapping of `bytes` bytes, not aliased;
    // every write below is inside it, and it is unmapped once, at the end.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED, "mmap of {bytes} bytes failed");
        // Advice only: without THP the pages are simply 4 KiB ones.
        libc::madvise(p, bytes, libc::MADV_HUGEPAGE);
        let base = p.cast::<u8>();
        let t0 = clock.monotonic_us();
        for off in (0..bytes).step_by(PAGE) {
            base.add(off).write_volatile(1);
        }
        let us = clock.monotonic_us() - t0;
        libc::munmap(p, bytes);
        us
    }
}

fn per_gib(us: u64, bytes: usize) -> f64 {
    us as f64 / 1e6 / (bytes as f64 / (1u64 << 30) as f64)
}

fn main() {
    let mut mb: usize = 512;
    let mut idle: u64 = 25;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mb" => mb = args.next().and_then(|v| v.parse().ok()).expect("--mb N"),
            "--idle" => idle = args.next().and_then(|v| v.parse().ok()).expect("--idle S"),
            other => panic!("unknown argument {other:?} (expected --mb N, --idle S)"),
        }
    }
    let bytes = mb << 20;
    let clock = SystemClock::new();
    let report = |label: &str, us: u64| {
        println!(
            "{label:<34} {mb:>6} MiB in {:>7.3} s = {:>6.2} s/GiB",
            us as f64 / 1e6,
            per_gib(us, bytes)
        );
    };
    report("1. now", touch_fresh(&clock, bytes));
    report("2. again at once", touch_fresh(&clock, bytes));
    std::thread::sleep(Duration::from_secs(idle));
    report(
        &format!("3. after {idle} s idle"),
        touch_fresh(&clock, bytes),
    );
    std::thread::sleep(Duration::from_secs(idle));
    let t0 = clock.monotonic_us();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| touch_fresh(&clock, bytes / 2));
        }
    });
    report(
        &format!("4. two threads, after {idle} s idle"),
        clock.monotonic_us() - t0,
    );
}
