//! `sim`: sweeps seeds through the simulation, replays one, checks that a
//! seed replays identically, and checks that known weaknesses are caught.
//!
//! ```text
//! cargo run -p sim --release -- --seeds 1..200 [--json]
//! cargo run -p sim --release -- --seed 17
//! cargo run -p sim --release -- meta --seed 42
//! cargo run -p sim --release -- mutants --seeds 1..50
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sim::scenario::{self, FaultSpec, Mutant, Options, Outcome};
use sim::shrink::{self, Found};

#[derive(Parser, Debug)]
#[command(name = "sim", about = "Deterministic simulation of msgtransfer")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A range of seeds to sweep, `A..B` (B excluded).
    #[arg(long, conflicts_with = "seed", global = true)]
    seeds: Option<String>,
    /// One seed to replay, with its fault trace.
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// Distinct messages per seed.
    #[arg(long, default_value_t = 300, global = true)]
    messages: u64,
    /// Conversations per seed.
    #[arg(long, default_value_t = 12, global = true)]
    conversations: u64,
    /// Put back one known weakness (sweeps, replays, shrink).
    #[arg(long, value_enum, global = true)]
    mutant: Option<Mutant>,
    /// Replay `--seed` with these faults instead of the ones it draws
    /// (comma-separated `kind@at+span/service/backend`, as `shrink` prints).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<FaultSpec>,
    /// Print one JSON line with the figures.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs one seed twice and compares the digests of the two histories
    /// and fault traces; fails if they differ.
    Meta,
    /// Runs every mutant over the seeds and reports which seed caught it;
    /// fails if a mutant is never caught.
    Mutants,
    /// Proptest over (seed, fault list): looks for a failing plan and
    /// shrinks it to a small one. Fails if it finds one.
    Shrink {
        /// Random plans to try.
        #[arg(long, default_value_t = 64)]
        cases: u32,
        /// Most faults per plan.
        #[arg(long, default_value_t = 12)]
        most: usize,
        /// Seed of proptest's own RNG.
        #[arg(long, default_value_t = 1)]
        rng_seed: u64,
    },
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("--seeds {s}: expected A..B"))?;
    let a: u64 = a.parse().map_err(|_| format!("--seeds {s}: bad start"))?;
    let b: u64 = b.parse().map_err(|_| format!("--seeds {s}: bad end"))?;
    if a >= b {
        return Err(format!("--seeds {s}: empty range"));
    }
    Ok(a..b)
}

/// Wall-clock seconds since `start`, for the seeds/s figure only.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // the binary's edge, not the simulation
fn stopwatch() -> impl Fn() -> f64 {
    let start = std::time::Instant::now();
    move || start.elapsed().as_secs_f64()
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The service's own logs, off unless RUST_LOG asks, stamped with
    // simulated time so two runs of a seed can be diffed line by line.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_timer(SimTime)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let seeds = match (&args.seeds, args.seed) {
        (Some(r), _) => match parse_range(r) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sim: {e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(s)) => s..s + 1,
        (None, None) => 1..51,
    };
    let opts = Options {
        messages: args.messages,
        conversations: args.conversations,
        trace: args.seed.is_some() && args.cmd.is_none(),
        mutant: args.mutant,
        ..Options::default()
    };
    let ok = match args.cmd {
        None if !args.faults.is_empty() => replay(seeds.start, &opts, &args.faults),
        None => sweep(seeds, &opts, args.json),
        Some(Cmd::Shrink {
            cases,
            most,
            rng_seed,
        }) => shrink_cmd(&opts, cases, most, rng_seed),
        Some(Cmd::Meta) => meta(seeds, &opts, args.json),
        Some(Cmd::Mutants) => mutants(seeds, &opts, args.json),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn describe(o: &Outcome) {
    let r = &o.report;
    println!(
        "seed {}: {} anomalies {:?}, {} ms simulated, faults {:?}, digest {:016x}",
        o.seed,
        o.anomalies(),
        o.anomalies_by_kind(),
        o.sim_ms,
        o.faults,
        o.digest
    );
    println!(
        "  messages {}, pushed {}, stored {}, persisted {}, cached {}",
        r.messages, r.pushed, r.stored, r.persisted, r.cached
    );
    for ex in r.examples.iter().take(5) {
        println!("  {ex}");
    }
}

fn sweep(seeds: Range<u64>, opts: &Options, json: bool) -> bool {
    println!(
        "sim: seeds {}..{} ({} messages, {} conversations each{})",
        seeds.start,
        seeds.end,
        opts.messages,
        opts.conversations,
        opts.mutant
            .map(|m| format!(", mutant {m:?}"))
            .unwrap_or_default()
    );
    let elapsed = stopwatch();
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut anomalies: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failing: Vec<u64> = Vec::new();
    let mut sim_ms = 0u64;
    let mut run = 0u64;
    for seed in seeds {
        run += 1;
        let outcome = match scenario::run(seed, opts) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("sim: seed {seed}: {e}");
                *anomalies.entry("host_failed").or_default() += 1;
                failing.push(seed);
                continue;
            }
        };
        sim_ms += outcome.sim_ms;
        for (k, v) in &outcome.faults {
            *faults.entry(k.clone()).or_default() += v;
        }
        for (k, v) in outcome.anomalies_by_kind() {
            *anomalies.entry(k).or_default() += v;
        }
        if opts.trace || outcome.anomalies() > 0 {
            describe(&outcome);
        }
        if outcome.anomalies() > 0 {
            failing.push(seed);
            println!(
                "  replay: cargo run -p sim --release -- --seed {seed}{}",
                mutant_flag(opts)
            );
        }
    }
    let wall = elapsed();
    let per_s = run as f64 / wall.max(1e-9);
    println!(
        "sim: {run} seeds, {:.1} s simulated, {wall:.1} s wall, {per_s:.2} seeds/s",
        sim_ms as f64 / 1000.0
    );
    println!("sim: faults injected: {faults:?}");
    println!("sim: anomalies: {anomalies:?}");
    if !failing.is_empty() {
        println!("sim: failing seeds: {failing:?}");
    }
    if json {
        let line = serde_json::json!({
            "seeds": run,
            "simulated_s": sim_ms as f64 / 1000.0,
            "wall_s": wall,
            "seeds_per_s": per_s,
            "faults": faults,
            "anomalies": anomalies,
            "failing_seeds": failing,
        });
        println!("{line}");
    }
    failing.is_empty()
}

/// ` --mutant NAME` when a mutant is on, so a printed replay command
/// replays the same thing.
fn mutant_flag(opts: &Options) -> String {
    opts.mutant
        .and_then(|m| m.to_possible_value())
        .map(|v| format!(" --mutant {}", v.get_name()))
        .unwrap_or_default()
}

fn replay(seed: u64, opts: &Options, faults: &[FaultSpec]) -> bool {
    match scenario::run_faults(seed, opts, faults) {
        Ok(o) => {
            describe(&o);
            o.anomalies() == 0
        }
        Err(e) => {
            eprintln!("sim: seed {seed}: {e}");
            false
        }
    }
}

fn shrink_cmd(opts: &Options, cases: u32, most: usize, rng_seed: u64) -> bool {
    let elapsed = stopwatch();
    let opts = Options {
        trace: false,
        ..opts.clone()
    };
    let found = shrink::search(&opts, cases, most, rng_seed);
    match found {
        Found::Nothing { cases } => {
            println!("shrink: {cases} plans, none failed ({:.1} s)", elapsed());
            true
        }
        Found::Failure {
            seed,
            faults,
            reason,
        } => {
            let list = shrink::faults_arg(&faults);
            println!(
                "shrink: failing plan shrunk to {} fault(s) on seed {seed} ({:.1} s): {list}",
                faults.len(),
                elapsed(),
            );
            println!("  because: {reason}");
            let mutant = mutant_flag(&opts);
            println!(
                "  replay: cargo run -p sim --release -- --seed {seed}{mutant} --faults {list}"
            );
            false
        }
    }
}

fn meta(seeds: Range<u64>, opts: &Options, json: bool) -> bool {
    let mut all_same = true;
    for seed in seeds {
        let runs: Vec<_> = (0..2).map(|_| scenario::run(seed, opts)).collect();
        let digests: Vec<String> = runs
            .iter()
            .map(|r| match r {
                Ok(o) => format!("{:016x}", o.digest),
                Err(e) => format!("error: {e}"),
            })
            .collect();
        let same = runs.iter().all(Result::is_ok) && digests[0] == digests[1];
        all_same &= same;
        println!(
            "meta: seed {seed}: first run {}, second run {} -> {}",
            digests[0],
            digests[1],
            if same { "identical" } else { "DIFFERENT" }
        );
        if json {
            println!(
                "{}",
                serde_json::json!({"seed": seed, "digests": digests, "identical": same})
            );
        }
    }
    all_same
}

fn mutants(seeds: Range<u64>, opts: &Options, json: bool) -> bool {
    let mut all_caught = true;
    for m in Mutant::value_variants() {
        let opts = Options {
            mutant: Some(*m),
            ..opts.clone()
        };
        let mut caught = None;
        let mut tried = 0;
        for seed in seeds.clone() {
            tried += 1;
            match scenario::run(seed, &opts) {
                Ok(o) if o.anomalies() > 0 => {
                    caught = Some((seed, o.anomalies_by_kind()));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    caught = Some((seed, BTreeMap::from([("host_failed", 1)])));
                    eprintln!("mutants: {m:?} seed {seed}: {e}");
                    break;
                }
            }
        }
        let name = m.to_possible_value().map(|v| v.get_name().to_string());
        let name = name.unwrap_or_else(|| format!("{m:?}"));
        match &caught {
            Some((seed, kinds)) => {
                println!("mutants: {name}: caught by seed {seed} ({tried} tried): {kinds:?}")
            }
            None => {
                all_caught = false;
                println!("mutants: {name}: MISSED in {tried} seeds");
            }
        }
        if json {
            println!(
                "{}",
                serde_json::json!({"mutant": name, "caught_by": caught.as_ref().map(|c| c.0), "tried": tried})
            );
        }
    }
    all_caught
}

/// Log timestamps in simulated time (`-` outside any host).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>9.3}s", t.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}
