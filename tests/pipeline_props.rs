//! Property tests of the whole pipeline on the embedded backends.
//!
//! Each case generates random OpenIM traffic (random size, conversations,
//! partitions, producer duplicates), runs the service with random crash
//! points (the service is killed with its uncommitted work and restarted)
//! and random backend faults (lost requests and lost answers on Redis and
//! Mongo, lost produce acknowledgements), drains, and asserts that the
//! shared checker finds nothing: no seq conflicts, no message at two seqs,
//! no order violation, nothing lost, nothing invented, no read seq above
//! the max seq. Time is a manual clock on a single-threaded runtime, so a
//! failing case replays exactly from its inputs.

use std::sync::Arc;

use msgtransfer::demo::{self, DemoArgs, FaultRates};
use msgtransfer::ports::clock::ManualClock;
use proptest::prelude::*;

fn run(args: DemoArgs) -> demo::DemoOutcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_764_000_000_000));
    rt.block_on(demo::run_async(args, clock)).unwrap()
}

/// A small, quiet, test-sized run; cases override what they vary.
fn base(seed: u64, messages: u64, conversations: u64) -> DemoArgs {
    DemoArgs {
        messages,
        conversations,
        seed,
        progress: false,
        partitions: 2,
        window: 1_000_000,
        transfer_loops: 1,
        ..DemoArgs::default()
    }
}

fn faults() -> impl Strategy<Value = Option<FaultRates>> {
    proptest::option::of((0.0..0.15f64, 0.0..0.15f64, 0.0..0.1f64).prop_map(
        |(produce, store, redis)| FaultRates {
            produce,
            store,
            redis,
        },
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn checker_finds_nothing_under_duplicates_crashes_and_faults(
        seed in any::<u64>(),
        messages in 1u64..400,
        conversations in 1u64..30,
        partitions in 1i32..5,
        duplicate_rate in 0.0..0.3f64,
        crash_at in proptest::collection::vec(0u64..600, 0..5),
        faults in faults(),
        transfer_loops in 1usize..3,
    ) {
        // A point at 0 falls before any input and is skipped by the harness.
        let first_crash = crash_at.iter().copied().filter(|c| *c > 0).min();
        let a = DemoArgs {
            partitions,
            duplicate_rate,
            crash_at,
            faults,
            transfer_loops,
            ..base(seed, messages, conversations)
        };
        let o = run(a.clone());
        prop_assert!(o.clean(), "{}", demo::summary(&a, &o));
        if first_crash.is_some_and(|c| c < o.records) {
            prop_assert!(o.restarts >= 1, "a crash point inside the input must kill the service");
        }
        prop_assert_eq!(o.report.messages, messages);
        prop_assert_eq!(o.report.persisted, o.report.stored);
        prop_assert_eq!(o.report.pushed, messages);
    }
}

#[test]
fn a_hot_conversation_over_100_messages_per_batch_is_split_not_dropped() {
    // One conversation, everything produced before the service starts: the
    // first batch holds hundreds of stored messages.
    let a = DemoArgs {
        partitions: 1,
        ..base(3, 1500, 1)
    };
    let o = run(a.clone());
    assert!(o.clean(), "{}", demo::summary(&a, &o));
    assert_eq!(o.report.persisted, o.report.stored);
    assert!(o.report.stored > 1000);
}

#[test]
fn redelivery_after_crashes_reuses_first_seqs() {
    let a = DemoArgs {
        duplicate_rate: 0.2,
        crash_at: vec![50, 120, 121, 300, 500],
        transfer_loops: 2,
        ..base(9, 600, 5)
    };
    let o = run(a.clone());
    assert!(o.clean(), "{}", demo::summary(&a, &o));
    assert_eq!(o.restarts, 5);
    let hits = o
        .metrics
        .iter()
        .find(|(k, _)| *k == "dedup_hits")
        .map(|(_, v)| *v)
        .unwrap();
    assert!(
        hits > 0,
        "redelivered and duplicated records hit the dedup table"
    );
}

#[test]
fn same_inputs_same_outcome() {
    let a = DemoArgs {
        partitions: 3,
        duplicate_rate: 0.1,
        crash_at: vec![80, 200],
        faults: Some(FaultRates {
            produce: 0.05,
            store: 0.05,
            redis: 0.05,
        }),
        ..base(21, 300, 7)
    };
    let x = run(a.clone());
    let y = run(a.clone());
    assert_eq!(x.report, y.report);
    assert_eq!(x.metrics, y.metrics);
    assert_eq!(x.restarts, y.restarts);
}
