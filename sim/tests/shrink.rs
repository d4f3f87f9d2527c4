//! Proptest over fault plans: random plans do not break the service, and a
//! plan that breaks a mutant shrinks to the fault that matters.

use sim::scenario::{self, Kind, Mutant, Options};
use sim::shrink::{self, Found};

#[test]
fn random_fault_plans_do_not_break_the_service() {
    match shrink::search(&Options::small(), 12, 12, 3) {
        Found::Nothing { cases } => assert_eq!(cases, 12),
        Found::Failure {
            seed,
            faults,
            reason,
        } => {
            panic!(
                "seed {seed} with faults {} fails: {reason}",
                shrink::faults_arg(&faults)
            );
        }
    }
}

#[test]
fn a_failure_of_the_unfenced_allocator_shrinks_to_a_failover() {
    let opts = Options {
        mutant: Some(Mutant::NoFence),
        ..Options::small()
    };
    let Found::Failure { seed, faults, .. } = shrink::search(&opts, 64, 10, 7) else {
        panic!("no plan among 64 broke the unfenced allocator");
    };
    assert!(
        faults.len() <= 3,
        "shrunk plan still has {} faults: {faults:?}",
        faults.len()
    );
    assert!(
        faults.iter().any(|f| f.kind == Kind::Failover),
        "a seq conflict needs a failover: {faults:?}"
    );
    // The shrunk plan is a real failure, replayable on its own.
    let o = scenario::run_faults(seed, &opts, &faults).expect("replay runs");
    assert!(o.anomalies() > 0);
}
