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
use sim::scenario::{self, Mutant, Options, Outcome};

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
    /// Put back one known weakness in a sweep.
    #[arg(long, value_enum)]
    mutant: Option<Mutant>,
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
        None => sweep(seeds, &opts, args.json),
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
            println!("  replay: cargo run -p sim --release -- --seed {seed}");
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
