//! The `msgtransfer` binary: a thin command-line shell over the library.

use std::process::ExitCode;

// The pipeline allocates many short-lived buffers per message; mimalloc
// handles that pattern markedly better than the system allocator (its 2.x
// line: see Cargo.toml for why not 3.x).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use msgtransfer::demo::{self, DemoArgs};

#[derive(Parser)]
#[command(name = "msgtransfer", version, about = "OpenIM MsgTransfer in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The generated OpenIM traffic, shared by `demo` and `load`.
#[derive(clap::Args)]
struct Traffic {
    /// Distinct messages to send.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Conversations to spread them over.
    #[arg(long, default_value_t = 2000)]
    conversations: u64,
    /// Seed of the traffic (and, in the demo, of the service's randomness).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of records produced twice, as a retrying producer does.
    #[arg(long, default_value_t = 0.0)]
    duplicate_rate: f64,
}

impl Traffic {
    /// Refuses values the generator cannot use, naming the flag.
    fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.duplicate_rate) {
            return Err(format!(
                "--duplicate-rate must be between 0 and 1, got {}",
                self.duplicate_rate
            ));
        }
        if self.conversations < 1 {
            return Err("--conversations must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on embedded backends with generated OpenIM
    /// traffic, then audit the result (no setup needed).
    Demo {
        #[command(flatten)]
        traffic: Traffic,
        /// Kill the service (uncommitted work and all) every N input records
        /// and restart it; 0 never.
        #[arg(long, default_value_t = 0)]
        crash_every: u64,
        /// Partitions per topic.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Uncommitted input records the producer allows before waiting.
        #[arg(long, default_value_t = 400_000)]
        window: u64,
        /// Transfer loops (consumer-group members) in the service. Each
        /// loop is one task, so while one waits for the embedded Redis the
        /// others keep the cores busy: 4 made 87-89k msg/s on the 1M demo
        /// where 2 made 78k.
        #[arg(long, default_value_t = 4)]
        transfer_loops: usize,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Print one JSON line with the figures at the end.
        #[arg(long)]
        json: bool,
        /// Do not print progress while running.
        #[arg(long)]
        no_progress: bool,
    },
    /// Run the service on real Kafka, Redis and MongoDB, configured from an
    /// OpenIM config folder (with IMENV_* overrides), until SIGTERM.
    Run {
        /// OpenIM config folder (openim-msgtransfer.yml, kafka.yml, ...).
        #[arg(short = 'c', long = "config_folder_path", alias = "config")]
        config: std::path::PathBuf,
        /// Instance index (picks prometheus.ports[index]).
        #[arg(short = 'i', long, default_value_t = 0)]
        index: usize,
    },
    /// Produce seeded OpenIM traffic into the real toRedis topic and record
    /// what was sent (for `audit`).
    Load {
        /// OpenIM config folder.
        #[arg(short = 'c', long = "config_folder_path", alias = "config")]
        config: std::path::PathBuf,
        /// Instance index of the daemon whose /metrics `--wait` watches.
        #[arg(short = 'i', long, default_value_t = 0)]
        index: usize,
        #[command(flatten)]
        traffic: Traffic,
        /// Records per second; 0 sends as fast as the broker takes them.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Where to write the record of what was sent.
        #[arg(long, default_value = msgtransfer::ops::DEFAULT_RECORD)]
        record: std::path::PathBuf,
        /// Then wait up to this many seconds for the daemon to persist
        /// everything, and report throughput and latency (0: do not wait).
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// Print one JSON line with the figures at the end.
        #[arg(long)]
        json: bool,
        /// Do not print progress.
        #[arg(long)]
        no_progress: bool,
    },
    /// Check the real Redis, MongoDB and Kafka: against a load record when
    /// there is one, else the stored state alone. Exits 1 on any anomaly.
    Audit {
        /// OpenIM config folder.
        #[arg(short = 'c', long = "config_folder_path", alias = "config")]
        config: std::path::PathBuf,
        /// The load record to check against (default: msgtransfer-load.json
        /// if it exists).
        #[arg(long)]
        record: Option<std::path::PathBuf>,
        /// Ignore any load record: check the stored state alone.
        #[arg(long)]
        no_record: bool,
        /// Redis lost data since the load (a restart without persistence, a
        /// failover): do not count stored messages missing from the cache as
        /// lost. What the cache does hold is still checked.
        #[arg(long)]
        cache_partial: bool,
        /// Print one JSON line with the report at the end.
        #[arg(long)]
        json: bool,
    },
    /// The dead-letter topic: list what the service refused, and put
    /// chosen records back once the cause is fixed.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show the dead-letter records: position, source, time, size, reason.
    List {
        /// OpenIM config folder.
        #[arg(short = 'c', long = "config_folder_path", alias = "config")]
        config: std::path::PathBuf,
        #[command(flatten)]
        select: DlqSelect,
        /// One JSON object per record instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Produce chosen dead-letter records again, with their original key,
    /// value and headers, into the topic they were read from (toRedis, or
    /// toMongo for a refused persistence record). A message processed
    /// before keeps its seq (dedup), so a record replayed twice is stored
    /// once.
    Replay {
        /// OpenIM config folder.
        #[arg(short = 'c', long = "config_folder_path", alias = "config")]
        config: std::path::PathBuf,
        #[command(flatten)]
        select: DlqSelect,
        /// Replay every record the other options select (without it, at
        /// least one --at is required).
        #[arg(long)]
        all: bool,
        /// Show what would be replayed; produce nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct DlqSelect {
    /// A record's position in the dead-letter topic, PARTITION:OFFSET (as
    /// `dlq list` prints it); repeatable.
    #[arg(long = "at", value_parser = msgtransfer::ops::dlq::parse_position)]
    at: Vec<(i32, i64)>,
    /// Only records whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
}

impl DlqSelect {
    fn selection(&self) -> msgtransfer::ops::dlq::Selection {
        msgtransfer::ops::dlq::Selection {
            at: self.at.clone(),
            reason_contains: self.reason.clone(),
        }
    }
}

/// Reads the configured dead-letter topic and returns the records `select`
/// picks, in topic order.
fn read_dead_letters(
    rt: &tokio::runtime::Runtime,
    settings: &msgtransfer::backends::kafka::KafkaSettings,
    topic: &str,
    select: &DlqSelect,
) -> anyhow::Result<Vec<msgtransfer::ops::dlq::DeadLetter>> {
    let parts = rt.block_on(msgtransfer::backends::kafka::read_topic_to_end(
        settings,
        topic,
        |_| {},
    ))?;
    let records: Vec<_> = parts.into_values().flatten().collect();
    Ok(msgtransfer::ops::dlq::select(&records, &select.selection()))
}

fn run_dlq(command: DlqCommand) -> ExitCode {
    use msgtransfer::ops::dlq;
    let (config, select) = match &command {
        DlqCommand::List { config, select, .. } | DlqCommand::Replay { config, select, .. } => {
            (config, select)
        }
    };
    let (cfg, rt) = match (config_or_exit(config, 0), runtime()) {
        (Ok(c), Ok(r)) => (c, r),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let settings = match msgtransfer::daemon::kafka_settings(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let letters = match read_dead_letters(&rt, &settings, &cfg.tuning.dead_letter_topic, select) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: reading {}: {e:#}", cfg.tuning.dead_letter_topic);
            return ExitCode::FAILURE;
        }
    };
    match command {
        DlqCommand::List { json, .. } => {
            for d in &letters {
                if json {
                    println!("{}", d.json());
                } else {
                    println!("{}", d.line());
                }
            }
            if !json {
                eprintln!(
                    "dlq: {} record(s) in {}",
                    letters.len(),
                    cfg.tuning.dead_letter_topic
                );
            }
            ExitCode::SUCCESS
        }
        DlqCommand::Replay {
            all,
            dry_run,
            select,
            ..
        } => {
            if !all && select.at.is_empty() {
                eprintln!("error: name records with --at PARTITION:OFFSET, or pass --all");
                return ExitCode::from(2);
            }
            if let Some(missing) = select
                .at
                .iter()
                .find(|p| !letters.iter().any(|d| (d.partition, d.offset) == **p))
            {
                eprintln!(
                    "error: no dead letter at {}:{} matches; nothing replayed",
                    missing.0, missing.1
                );
                return ExitCode::from(2);
            }
            for d in &letters {
                println!("{}", d.line());
            }
            if dry_run {
                eprintln!(
                    "dlq: dry run: {} record(s) would be replayed",
                    letters.len()
                );
                return ExitCode::SUCCESS;
            }
            let inputs: Vec<std::sync::Arc<str>> = vec![
                cfg.kafka.to_redis_topic.as_str().into(),
                cfg.kafka.to_mongo_topic.as_str().into(),
            ];
            let result = msgtransfer::backends::kafka::KafkaProducer::new(&settings)
                .map_err(anyhow::Error::from)
                .and_then(|p| Ok(rt.block_on(dlq::replay(&p, &letters, &inputs))?));
            match result {
                Ok(n) => {
                    eprintln!("dlq: replayed {n} record(s)");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: starting the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn config_or_exit(
    dir: &std::path::Path,
    index: usize,
) -> Result<msgtransfer::config::Config, ExitCode> {
    msgtransfer::daemon::load_config(dir, index).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

fn run_load(
    dir: &std::path::Path,
    index: usize,
    args: msgtransfer::ops::load::LoadArgs,
    json: bool,
) -> ExitCode {
    if args.rate < 0.0 || args.messages == 0 {
        eprintln!("error: --messages must be at least 1 and --rate at least 0");
        return ExitCode::from(2);
    }
    let (cfg, rt) = match (config_or_exit(dir, index), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    match rt.block_on(msgtransfer::ops::load::run(&cfg, &args)) {
        Ok(o) => {
            println!("{}", msgtransfer::ops::load::summary(&o));
            if json {
                println!("{}", serde_json::to_string(&o).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_audit(
    dir: &std::path::Path,
    record: Option<std::path::PathBuf>,
    no_record: bool,
    options: msgtransfer::ops::audit::Options,
    json: bool,
) -> ExitCode {
    let (cfg, rt) = match (config_or_exit(dir, 0), runtime()) {
        (Ok(c), Ok(rt)) => (c, rt),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let path = match (no_record, record) {
        (true, _) => None,
        (false, Some(p)) => Some(p),
        (false, None) => {
            let p = std::path::PathBuf::from(msgtransfer::ops::DEFAULT_RECORD);
            p.exists().then_some(p)
        }
    };
    let record = match path
        .as_deref()
        .map(msgtransfer::ops::load::LoadRecord::read)
    {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let progress = |what: &str| eprintln!("audit: {what}");
    match rt.block_on(msgtransfer::ops::audit::run_with(
        &cfg,
        record.as_ref(),
        &options,
        progress,
    )) {
        Ok(r) => {
            println!("{}", msgtransfer::ops::audit::summary(&r));
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            }
            if r.anomalies() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(dir: &std::path::Path, index: usize) -> ExitCode {
    let cfg = match config_or_exit(dir, index) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSGTRANSFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.log.level()));
    // Colours only for a person at a terminal, not in a log file.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log.format {
        msgtransfer::config::LogFormat::Json => logs.json().init(),
        msgtransfer::config::LogFormat::Text => logs.init(),
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let code = match rt.block_on(msgtransfer::daemon::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // A task stuck in a blocking client call (a broker that stopped
    // answering) must not keep the process alive: give the rest a second.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSGTRANSFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// mimalloc's `mi_option_purge_delay`, which libmimalloc-sys does not export
/// as a constant; it is the 16th entry of `mi_option_e` in both mimalloc v2
/// and v3 (`mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The one-shot commands (`demo` above all) grow to gigabytes and free and
/// reallocate buffers at a high rate. By default mimalloc hands freed pages
/// back to the kernel after 10 ms, and the next allocation faults them in
/// again, zeroed: on the 1M-message demo that zeroing was 31 % of all CPU
/// samples. These processes exit when done, so they keep what they freed.
/// The daemon runs for months and keeps the default.
fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores a value in mimalloc's option table;
    // -1 is the documented "never purge" value.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() -> ExitCode {
    // Let mimalloc back its arenas with transparent huge pages (2 MiB):
    // the embedded backends keep gigabytes of state, and faulting it in 4 KiB
    // at a time cost more system time than the pipeline's own work
    // (measured on the 300k-message demo: system time 2.4-4.8 s → 1.3-1.7 s).
    // SAFETY: mi_option_set_enabled only stores a flag in mimalloc's option
    // table, before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set_enabled(libmimalloc_sys::mi_option_large_os_pages, true)
    };
    let cli = Cli::parse();
    if let Command::Run { config, index } = &cli.command {
        return run_daemon(config, *index);
    }
    keep_freed_memory();
    init_logs();
    match cli.command {
        Command::Run { .. } => unreachable!("handled above"),
        Command::Dlq { command } => run_dlq(command),
        Command::Load {
            config,
            index,
            traffic,
            rate,
            record,
            wait,
            json,
            no_progress,
        } => {
            if let Err(e) = traffic.check() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            run_load(
                &config,
                index,
                msgtransfer::ops::load::LoadArgs {
                    messages: traffic.messages,
                    conversations: traffic.conversations,
                    seed: traffic.seed,
                    rate,
                    duplicate_rate: traffic.duplicate_rate,
                    record,
                    progress: !no_progress,
                    wait: (wait > 0).then(|| std::time::Duration::from_secs(wait)),
                },
                json,
            )
        }
        Command::Audit {
            config,
            record,
            no_record,
            cache_partial,
            json,
        } => run_audit(
            &config,
            record,
            no_record,
            msgtransfer::ops::audit::Options { cache_partial },
            json,
        ),
        Command::Demo {
            traffic,
            crash_every,
            partitions,
            window,
            transfer_loops,
            workers,
            json,
            no_progress,
        } => {
            if let Err(e) = traffic.check() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            if partitions < 1 {
                eprintln!("error: --partitions must be at least 1");
                return ExitCode::from(2);
            }
            let args = DemoArgs {
                messages: traffic.messages,
                conversations: traffic.conversations,
                seed: traffic.seed,
                duplicate_rate: traffic.duplicate_rate,
                crash_every,
                json,
                progress: !no_progress,
                partitions,
                window,
                transfer_loops,
                workers,
                crash_at: Vec::new(),
                faults: None,
            };
            match demo::run(&args) {
                Ok(outcome) => {
                    println!("{}", demo::summary(&args, &outcome));
                    if json {
                        println!("{}", demo::json_line(&args, &outcome));
                    }
                    if outcome.clean() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
