//! Proptest over fault plans: a strategy for (seed, faults), and a search
//! that, given a property failure, shrinks the plan to a small one.
//!
//! The seed fixes the workload, the network and timing; the faults are
//! proptest's to vary. Shrinking removes faults, moves them earlier and
//! shortens them, so a failure found among a dozen faults ends up stated
//! with the one or two that matter.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::scenario::{self, FaultSpec, KINDS, Options};

/// One fault anywhere in the safety phase of `opts`.
pub fn fault(opts: &Options) -> impl Strategy<Value = FaultSpec> + use<> {
    let safety_ms = (opts.safety.as_millis() as u64).max(2);
    (
        0..KINDS.len(),
        0..safety_ms,
        50u64..6000,
        0usize..2,
        0usize..3,
    )
        .prop_map(|(k, at_ms, span_ms, service, backend)| FaultSpec {
            kind: KINDS[k],
            at_ms,
            span_ms,
            service,
            backend,
        })
}

/// A seed from `seeds` and up to `most` faults.
pub fn plan(
    opts: &Options,
    seeds: std::ops::Range<u64>,
    most: usize,
) -> impl Strategy<Value = (u64, Vec<FaultSpec>)> + use<> {
    (seeds, proptest::collection::vec(fault(opts), 0..=most))
}

/// What [`search`] found.
#[derive(Debug)]
pub enum Found {
    /// No case failed.
    Nothing {
        /// Cases run.
        cases: u32,
    },
    /// A failing case, shrunk.
    Failure {
        /// The seed.
        seed: u64,
        /// The smallest failing fault list found.
        faults: Vec<FaultSpec>,
        /// Why it fails.
        reason: String,
    },
}

/// A fault list as `--faults` takes it: the faults' own text, joined by
/// commas.
pub fn faults_arg(faults: &[FaultSpec]) -> String {
    faults
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `cases` random plans against "no anomaly" and shrinks the first
/// failure. Deterministic: proptest's own RNG is seeded from `rng_seed`.
pub fn search(opts: &Options, cases: u32, most: usize, rng_seed: u64) -> Found {
    let config = Config {
        cases,
        max_shrink_iters: 400,
        failure_persistence: None,
        ..Config::default()
    };
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&rng_seed.to_le_bytes());
    let rng = proptest::test_runner::TestRng::from_seed(
        proptest::test_runner::RngAlgorithm::ChaCha,
        &bytes,
    );
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&plan(opts, 1..1000, most), |(seed, faults)| {
        let o = scenario::run_faults(seed, opts, &faults)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if o.anomalies() > 0 {
            return Err(TestCaseError::fail(format!(
                "{:?} {:?}",
                o.anomalies_by_kind(),
                o.report.examples.first()
            )));
        }
        Ok(())
    });
    match result {
        Ok(()) => Found::Nothing { cases },
        Err(TestError::Fail(reason, (seed, faults))) => Found::Failure {
            seed,
            faults,
            reason: reason.to_string(),
        },
        Err(TestError::Abort(reason)) => Found::Failure {
            seed: 0,
            faults: Vec::new(),
            reason: format!("aborted: {reason}"),
        },
    }
}
