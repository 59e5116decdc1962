//! `points-ledger`: the service and its tools, as subcommands of one binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use points_ledger::api::Auth;

// mimalloc: under load, glibc malloc/free took ~21% of the server's CPU
// (BENCHMARKS.md); this allocator serves the Rust side.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use points_ledger::log::kafka::KafkaConfig;
use points_ledger::log::EventLog;
use points_ledger::server::{self, Config, LogConfig};

/// For the tools that fold the whole log in one go (`replay`, `recon`,
/// `verify`): mimalloc keeps the pages it frees instead of giving them back
/// to the OS and faulting them in, zeroed, again. A replay of 5.17M records
/// takes ~10 % less CPU for ~75 MB more at its peak (BENCHMARKS.md, tenth
/// session). The service keeps the default, for its memory bound.
fn keep_freed_pages() {
    // `mi_option_purge_delay` in mimalloc.h (v2 and v3: the option after
    // `mi_option_eager_commit_delay`, 14); the bindings leave it out.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an integer option that mimalloc reads when it decides
    // whether to give pages back; -1 means never.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(name = "points-ledger", version, about = "An event-sourced points ledger for loyalty programmes")]
struct Cli {
    /// A file of `flag-name = value` lines (flags and environment variables win).
    #[arg(long, global = true, env = "POINTS_LEDGER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogKind {
    /// The embedded log on local disk under --data-dir.
    Embedded,
    /// Apache Kafka (or any Kafka-protocol broker).
    Kafka,
}

/// Where the log is: shared by `serve` and every tool.
#[derive(clap::Args, Clone)]
struct LogArgs {
    /// Where events are appended.
    #[arg(long, env = "POINTS_LEDGER_LOG", value_enum, default_value = "embedded")]
    log: LogKind,
    /// Account partitions; fixed when the log (or Kafka topic) is created.
    #[arg(long, env = "POINTS_LEDGER_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
    /// Kafka bootstrap servers, HOST:PORT[,...] (with --log kafka).
    #[arg(long, env = "POINTS_LEDGER_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The account topic; programme rules go to `<topic>-control`.
    #[arg(long, env = "POINTS_LEDGER_KAFKA_TOPIC", default_value = "points-events")]
    kafka_topic: String,
    /// Replication factor of topics the service creates.
    #[arg(long, env = "POINTS_LEDGER_KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    kafka_replication_factor: i32,
    /// Longest an append may take before the command gets UNAVAILABLE.
    #[arg(long, env = "POINTS_LEDGER_KAFKA_APPEND_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    kafka_append_timeout_ms: u64,
    /// Extra librdkafka property, KEY=VALUE (repeatable; e.g. security.protocol=ssl).
    #[arg(long = "kafka-property", env = "POINTS_LEDGER_KAFKA_PROPERTIES", value_delimiter = ';')]
    kafka_properties: Vec<String>,
}

impl LogArgs {
    fn kafka(&self, create_topics: bool) -> anyhow::Result<KafkaConfig> {
        let brokers = self.kafka_brokers.as_deref().context("--log kafka needs --kafka-brokers HOST:PORT")?;
        let mut k = KafkaConfig::new(brokers, &self.kafka_topic, self.partitions);
        k.replication_factor = self.kafka_replication_factor;
        k.append_timeout = std::time::Duration::from_millis(self.kafka_append_timeout_ms);
        k.create_topics = create_topics;
        for p in &self.kafka_properties {
            let (key, value) =
                p.split_once('=').with_context(|| format!("--kafka-property {p}: expected KEY=VALUE"))?;
            k.properties.push((key.trim().to_string(), value.trim().to_string()));
        }
        Ok(k)
    }

    /// The account log, for tools: read only, never creating anything.
    fn open_events_read_only(&self, data_dir: &std::path::Path) -> anyhow::Result<Box<dyn EventLog>> {
        Ok(match self.log {
            LogKind::Embedded => Box::new(
                points_ledger::log::embedded::EmbeddedLog::open_read_only(&data_dir.join("log").join("events"))
                    .with_context(|| format!("opening the log in {}", data_dir.display()))?,
            ),
            LogKind::Kafka => Box::new(points_ledger::log::kafka::KafkaLog::open(self.kafka(false)?)?),
        })
    }

    /// The control stream (programme rules), for tools: read only.
    fn open_control_read_only(&self, data_dir: &std::path::Path) -> anyhow::Result<Box<dyn EventLog>> {
        Ok(match self.log {
            LogKind::Embedded => Box::new(
                points_ledger::log::embedded::EmbeddedLog::open_read_only(&data_dir.join("log").join("control"))
                    .with_context(|| format!("opening the control log in {}", data_dir.display()))?,
            ),
            LogKind::Kafka => {
                let mut k = self.kafka(false)?;
                k.topic = server::control_topic(&k.topic);
                k.partitions = 1;
                Box::new(points_ledger::log::kafka::KafkaLog::open(k)?)
            }
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the gRPC service.
    Serve(ServeArgs),
    /// Drive a real gRPC server with load and report throughput and latency.
    Bench(BenchArgs),
    /// Rebuild every view from offset zero into a fresh directory.
    Replay(ReplayArgs),
    /// An account's events in order, with the balance and lots after each.
    Explain(ExplainArgs),
    /// Rebuild the views into a temporary directory and compare them with the
    /// live ones; exits 1 and names the first differing key on any difference.
    Verify(VerifyArgs),
    /// Daily books per programme, folded afresh from the log up to where the
    /// balance view stands and checked against it; exits 1 when a book does
    /// not balance or the books disagree with the view.
    Recon(ReconArgs),
    /// The log's events as JSON lines or Parquet, filtered by tenant,
    /// programme, account and time.
    Export(ExportArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum BookFormat {
    Table,
    Csv,
    Json,
    /// Needs --output.
    Parquet,
}

#[derive(Clone, Copy, ValueEnum)]
enum EventFormat {
    Jsonl,
    /// Needs --output.
    Parquet,
}

#[derive(clap::Args)]
struct ExportArgs {
    /// The service's data directory (only its log is read).
    #[arg(long, env = "POINTS_LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    #[arg(long, env = "POINTS_LEDGER_EXPORT_FORMAT", value_enum)]
    format: EventFormat,
    /// The file to write (`-` for standard output, JSON lines only).
    #[arg(long, env = "POINTS_LEDGER_EXPORT_OUTPUT")]
    output: PathBuf,
    #[arg(long, env = "POINTS_LEDGER_EXPORT_TENANT")]
    tenant: Option<String>,
    #[arg(long, env = "POINTS_LEDGER_EXPORT_PROGRAMME")]
    programme: Option<String>,
    /// TENANT/PROGRAMME/MEMBER
    #[arg(long, env = "POINTS_LEDGER_EXPORT_ACCOUNT")]
    account: Option<String>,
    /// Events decided at or after this instant (RFC 3339).
    #[arg(long, env = "POINTS_LEDGER_EXPORT_FROM")]
    from: Option<String>,
    /// Events decided before this instant (RFC 3339).
    #[arg(long, env = "POINTS_LEDGER_EXPORT_TO")]
    to: Option<String>,
}

#[derive(clap::Args)]
struct ReconArgs {
    /// The service's data directory (read only; the service may be running).
    #[arg(long, env = "POINTS_LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    /// The first day, YYYY-MM-DD in each programme's time zone.
    #[arg(long, env = "POINTS_LEDGER_RECON_DATE")]
    date: String,
    /// The last day (inclusive); default: --date.
    #[arg(long, env = "POINTS_LEDGER_RECON_TO")]
    to: Option<String>,
    /// Only this tenant's programmes.
    #[arg(long, env = "POINTS_LEDGER_RECON_TENANT")]
    tenant: Option<String>,
    /// Only this programme (with --tenant).
    #[arg(long, env = "POINTS_LEDGER_RECON_PROGRAMME", requires = "tenant")]
    programme: Option<String>,
    #[arg(long, env = "POINTS_LEDGER_RECON_FORMAT", value_enum, default_value = "table")]
    format: BookFormat,
    /// Write here instead of standard output.
    #[arg(long, env = "POINTS_LEDGER_RECON_OUTPUT")]
    output: Option<PathBuf>,
    /// Roll the days up into periods (issuance, redemption and expiry totals
    /// by month, quarter or year).
    #[arg(long, env = "POINTS_LEDGER_RECON_PERIOD", value_enum, default_value = "day")]
    period: PeriodArg,
    /// Instead of books: points due to expire per day for this many days
    /// from --date, from the balance view's expiry index.
    #[arg(long, env = "POINTS_LEDGER_RECON_EXPIRY_FORECAST_DAYS", value_parser = clap::value_parser!(u32).range(1..=3660))]
    expiry_forecast_days: Option<u32>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PeriodArg {
    Day,
    Month,
    Quarter,
    Year,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The service's data directory (read only; the service may be running).
    #[arg(long, env = "POINTS_LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    /// A directory that does not exist yet, for the rebuilt views.
    #[arg(long, env = "POINTS_LEDGER_REPLAY_INTO")]
    into: PathBuf,
    /// Fold only records with an offset below this, in every partition.
    #[arg(long, env = "POINTS_LEDGER_REPLAY_UNTIL_POSITION", conflicts_with = "until_time")]
    until_position: Option<u64>,
    /// Fold only records decided at or before this instant (RFC 3339).
    #[arg(long, env = "POINTS_LEDGER_REPLAY_UNTIL_TIME")]
    until_time: Option<String>,
    /// Which views: `balances` (accounts, statements, expiry index) into
    /// DIR/views, `books` (daily books, risk view, alerts) into DIR/books,
    /// or `all`.
    #[arg(long, env = "POINTS_LEDGER_REPLAY_VIEWS", value_enum, default_value = "all")]
    views: ReplayViews,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReplayViews {
    All,
    Balances,
    Books,
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The service's data directory (read only; the service may be running).
    #[arg(long, env = "POINTS_LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    /// TENANT/PROGRAMME/MEMBER
    #[arg(long, env = "POINTS_LEDGER_EXPLAIN_ACCOUNT")]
    account: String,
    /// Stop at this instant (RFC 3339): the account as it was then.
    #[arg(long, env = "POINTS_LEDGER_EXPLAIN_AS_OF")]
    as_of: Option<String>,
    /// Stop after this offset of the account's partition (a reply's
    /// `position.offset`): the account as it was right after it.
    #[arg(long, env = "POINTS_LEDGER_EXPLAIN_AS_OF_POSITION")]
    as_of_position: Option<u64>,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The service's data directory (read only; the service may be running).
    #[arg(long, env = "POINTS_LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// HOST:PORT of a running service; without it, a server is started on the
    /// embedded log in a temporary directory.
    #[arg(long, env = "POINTS_LEDGER_BENCH_TARGET")]
    target: Option<String>,
    /// Distinct member accounts to spread the load over.
    #[arg(long, env = "POINTS_LEDGER_BENCH_ACCOUNTS", default_value_t = 100_000)]
    accounts: u64,
    /// Skewed traffic, ACCOUNTS%/TRAFFIC%: e.g. 20/80 sends 80 % of the
    /// commands to 20 % of the accounts (default: uniform).
    #[arg(long, env = "POINTS_LEDGER_BENCH_HOT")]
    hot: Option<String>,
    /// Requests in flight at once.
    #[arg(long, env = "POINTS_LEDGER_BENCH_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    #[arg(long, env = "POINTS_LEDGER_BENCH_DURATION_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    duration_seconds: u64,
    /// Operation weights: earn, spend, reserve, refund, query.
    #[arg(long, env = "POINTS_LEDGER_BENCH_MIX", default_value = "earn=70,spend=20,reserve=5,refund=5")]
    mix: String,
    /// Also write the figures to this file as JSON.
    #[arg(long, env = "POINTS_LEDGER_BENCH_JSON")]
    json: Option<PathBuf>,
    /// Seed of the request generator (request ids also carry the run's start time).
    #[arg(long, env = "POINTS_LEDGER_BENCH_SEED", default_value_t = 1)]
    seed: u64,
    /// Send SubmitBatch calls of this many commands (1: unary calls).
    #[arg(long, env = "POINTS_LEDGER_BENCH_BATCH", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// Before the load, measure the floors in the same run: gRPC empty calls
    /// on the same server, and the raw log underneath (RocksDB sync
    /// WriteBatch, or the plain rdkafka producer on the same broker).
    #[arg(long, env = "POINTS_LEDGER_BENCH_FLOORS")]
    floors: bool,
    /// The log of the server the bench starts itself (without --target).
    /// On Kafka, name a fresh --kafka-topic per run.
    #[command(flatten)]
    log: LogArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "POINTS_LEDGER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory for the embedded log, writer state and views.
    #[arg(long, env = "POINTS_LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    /// Commands a writer decides and appends together at most.
    #[arg(long, env = "POINTS_LEDGER_BATCH_COMMANDS_MAX", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch_commands_max: u64,
    /// Bearer tokens file (`TOKEN TENANT[,TENANT...]|* [admin]` per line); without it, access is open.
    #[arg(long, env = "POINTS_LEDGER_AUTH_TOKENS_FILE")]
    auth_tokens_file: Option<PathBuf>,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::new(&args.data_dir);
    config.partitions = args.log.partitions;
    if let LogKind::Kafka = args.log.log {
        config.log = LogConfig::Kafka(args.log.kafka(true)?);
    }
    config.writer.batch_commands_max = args.batch_commands_max as usize;
    if let Some(path) = &args.auth_tokens_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        config.auth = Auth::parse(&text)?;
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    // Scripts and tests read this line to learn the port (e.g. with --listen 127.0.0.1:0).
    println!("points-ledger listening on {}", listener.local_addr()?);
    server::run(listener, config, shutdown_signal()).await
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use points_ledger::projector::{rebuild, Until};
    if args.into.exists() {
        anyhow::bail!("{} exists: replay builds into a fresh directory", args.into.display());
    }
    let time = match &args.until_time {
        Some(t) => Some(rfc3339_millis("--until-time", t)?),
        None => None,
    };
    let log = args.log.open_events_read_only(&args.data_dir)?;
    // At most this many records (fewer with --until-time).
    let mut total = 0u64;
    for p in 0..log.partitions() {
        let end = log.end_offset(p)?;
        total += args.until_position.map_or(end, |u| u.min(end));
    }
    let mut outputs = Vec::new();
    if args.views != ReplayViews::Books {
        let into = args.into.join("views");
        let started = std::time::Instant::now();
        let mut last_print = started;
        let until = Until { offset: args.until_position, time, offsets: None };
        let (db, folded) = rebuild(log.as_ref(), &into, until, |n| {
            if last_print.elapsed().as_millis() >= 250 {
                last_print = std::time::Instant::now();
                eprint!("\rviews {}", progress_line(n, total, started.elapsed()));
            }
        })?;
        eprintln!("\rviews {}", progress_line(folded, total.max(folded), started.elapsed()));
        outputs.push((into, db, folded, started.elapsed()));
    }
    if args.views != ReplayViews::Balances {
        let control = args.log.open_control_read_only(&args.data_dir)?;
        let registry = points_ledger::programmes::Registry::load(control.as_ref())?;
        let into = args.into.join("books");
        let started = std::time::Instant::now();
        let mut last_print = started;
        let (db, folded) =
            points_ledger::books::replay(log.as_ref(), &registry, &into, args.until_position, time, |n| {
                if last_print.elapsed().as_millis() >= 250 {
                    last_print = std::time::Instant::now();
                    eprint!("\rbooks {}", progress_line(n, total, started.elapsed()));
                }
            })?;
        eprintln!("\rbooks {}", progress_line(folded, total.max(folded), started.elapsed()));
        outputs.push((into, db, folded, started.elapsed()));
    }
    for (into, db, folded, took) in outputs {
        let secs = took.as_secs_f64();
        println!(
            "replayed {folded} records into {} in {secs:.2} s ({:.0} records/s)",
            into.display(),
            folded as f64 / secs.max(1e-9)
        );
        for (cf, digest, rows) in db.digest()? {
            println!("  {cf:<10} {rows:>10} rows  sha256 {digest}");
        }
    }
    Ok(())
}

/// `[#########.........]  45%  12345/27000 records  8123 records/s`
fn progress_line(done: u64, total: u64, elapsed: std::time::Duration) -> String {
    const WIDTH: u64 = 30;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let percent = (done.min(total) * 100).checked_div(total).unwrap_or(100);
    format!(
        "[{}{}] {percent:>3}%  {done}/{total} records  {:.0} records/s   ",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize),
        done as f64 / elapsed.as_secs_f64().max(1e-9)
    )
}

fn rfc3339_millis(flag: &str, t: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(t)
        .with_context(|| format!("{flag} {t}: expected RFC 3339, e.g. 2026-11-11T00:00:00+08:00"))?
        .timestamp_millis())
}

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let key = parse_account("--account", &args.account)?;
    let as_of = args.as_of.as_deref().map(|t| rfc3339_millis("--as-of", t)).transpose()?;
    let log = args.log.open_events_read_only(&args.data_dir)?;
    let control = args.log.open_control_read_only(&args.data_dir)?;
    let registry = points_ledger::programmes::Registry::load(control.as_ref())?;
    let programme = points_ledger::domain::ProgrammeKey {
        tenant_id: key.tenant_id.clone(),
        programme_id: key.programme_id.clone(),
    };
    let steps = points_ledger::audit::explain(log.as_ref(), &key, as_of, args.as_of_position)?;
    let level = |version: u64, growth: i64| {
        registry.version(&programme, version).map(|p| p.level_for(growth).to_string()).unwrap_or_default()
    };
    println!(
        "{:>8}  {:<24} {:<28} {:<20} {:>8} {:>10} {:>9} {:>7} {:>8} {:<8}  lots",
        "offset", "at (UTC)", "request", "event", "delta", "available", "reserved", "debt", "growth", "level"
    );
    for s in &steps {
        let at = chrono::DateTime::from_timestamp_millis(s.at)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        let lots: Vec<String> = s.after.lots_fefo().iter().map(|(id, l)| format!("{id}={}", l.remaining)).collect();
        println!(
            "{:>8}  {:<24} {:<28} {:<20} {:>8} {:>10} {:>9} {:>7} {:>8} {:<8}  {}",
            s.offset,
            at,
            if s.request_id.is_empty() { "(scheduler)" } else { &s.request_id },
            s.event.name(),
            s.event.net_delta(),
            s.after.available(),
            s.after.reserved(),
            s.after.debt,
            s.after.growth,
            level(s.programme_version, s.after.growth),
            lots.join(" ")
        );
    }
    let last = steps.last().map(|s| s.after.clone()).unwrap_or_default();
    println!(
        "{key}: {} events; available {}, reserved {}, debt {}, growth {}{}",
        steps.len(),
        last.available(),
        last.reserved(),
        last.debt,
        last.growth,
        if last.earning_frozen || last.spending_frozen {
            format!(" (frozen: earning {}, spending {})", last.earning_frozen, last.spending_frozen)
        } else {
            String::new()
        }
    );
    if let Err(v) = last.check_invariants_fully() {
        anyhow::bail!("invariant violated: {v}");
    }
    Ok(())
}

fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let log = args.log.open_events_read_only(&args.data_dir)?;
    let live = points_ledger::audit::open_views_read_only(&args.data_dir)
        .with_context(|| format!("opening the views in {} for audit", args.data_dir.display()))?;
    let (folded, difference) = points_ledger::audit::verify(log.as_ref(), &live)?;
    let mut ok = match difference {
        None => {
            println!("views verified: a rebuild of {folded} records from offset zero is byte-identical");
            true
        }
        Some(d) => {
            println!("views DIFFER from a rebuild of {folded} records: first difference at {d}");
            false
        }
    };
    let books_dir = args.data_dir.join("books");
    if books_dir.exists() {
        let books = points_ledger::store::Db::open_read_only(&books_dir, points_ledger::store::BOOK_CFS)
            .with_context(|| format!("opening the books in {}", books_dir.display()))?;
        let control = args.log.open_control_read_only(&args.data_dir)?;
        let registry = points_ledger::programmes::Registry::load(control.as_ref())?;
        match points_ledger::books::verify(log.as_ref(), &registry, &books)? {
            (folded, None) => {
                println!("books verified: a rebuild of {folded} records from offset zero is byte-identical")
            }
            (folded, Some(d)) => {
                println!("books DIFFER from a rebuild of {folded} records: first difference at {d}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

fn parse_account(flag: &str, s: &str) -> anyhow::Result<points_ledger::domain::AccountKey> {
    match s.split('/').collect::<Vec<_>>().as_slice() {
        [t, p, m] if !t.is_empty() && !p.is_empty() && !m.is_empty() => {
            Ok(points_ledger::domain::AccountKey::new(t, p, m))
        }
        _ => anyhow::bail!("{flag} {s}: expected TENANT/PROGRAMME/MEMBER"),
    }
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    use points_ledger::export;
    let filter = export::Filter {
        tenant: args.tenant.clone(),
        programme: args.programme.clone(),
        account: args.account.as_deref().map(|a| parse_account("--account", a)).transpose()?,
        from: args.from.as_deref().map(|t| rfc3339_millis("--from", t)).transpose()?,
        to: args.to.as_deref().map(|t| rfc3339_millis("--to", t)).transpose()?,
    };
    let log = args.log.open_events_read_only(&args.data_dir)?;
    let n = match args.format {
        EventFormat::Jsonl if args.output.as_os_str() == "-" => {
            export::events_jsonl(log.as_ref(), &filter, &mut std::io::stdout().lock())?
        }
        EventFormat::Jsonl => {
            let file =
                std::fs::File::create(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let n = export::events_jsonl(log.as_ref(), &filter, &mut out)?;
            std::io::Write::flush(&mut out)?;
            n
        }
        EventFormat::Parquet if args.output.as_os_str() == "-" => {
            anyhow::bail!("--format parquet needs --output FILE (not standard output)")
        }
        EventFormat::Parquet => export::events_parquet(log.as_ref(), &filter, &args.output)?,
    };
    eprintln!("exported {n} events");
    Ok(())
}

/// `recon --expiry-forecast-days N`: points due per day, per programme.
fn expiry_forecast(
    args: &ReconArgs,
    registry: &points_ledger::programmes::Registry,
    from: chrono::NaiveDate,
    days: u32,
) -> anyhow::Result<bool> {
    let views = points_ledger::audit::open_views_read_only(&args.data_dir)
        .with_context(|| format!("the forecast reads the balance view in {}", args.data_dir.display()))?;
    let mut rows = Vec::new();
    for p in registry.all_current() {
        if args.tenant.as_deref().is_some_and(|t| t != p.tenant_id)
            || args.programme.as_deref().is_some_and(|x| x != p.programme_id)
        {
            continue;
        }
        for (date, points, lots) in points_ledger::books::expiry_forecast(&views, &p, from, days)? {
            rows.push(serde_json::json!({
                "tenant_id": p.tenant_id, "programme_id": p.programme_id, "date": date.to_string(),
                "points": points, "lots": lots,
            }));
        }
    }
    let text = match args.format {
        BookFormat::Json => rows.iter().map(|r| r.to_string() + "\n").collect::<String>(),
        BookFormat::Csv => {
            let mut t = "tenant_id,programme_id,date,points,lots\r\n".to_string();
            for r in &rows {
                t += &format!(
                    "{},{},{},{},{}\r\n",
                    r["tenant_id"].as_str().unwrap_or_default(),
                    r["programme_id"].as_str().unwrap_or_default(),
                    r["date"].as_str().unwrap_or_default(),
                    r["points"],
                    r["lots"]
                );
            }
            t
        }
        BookFormat::Table => {
            let mut t =
                format!("{:<12} {:<12} {:<10} {:>12} {:>8}\n", "tenant", "programme", "date", "expiring", "lots");
            for r in &rows {
                t += &format!(
                    "{:<12} {:<12} {:<10} {:>12} {:>8}\n",
                    r["tenant_id"].as_str().unwrap_or_default(),
                    r["programme_id"].as_str().unwrap_or_default(),
                    r["date"].as_str().unwrap_or_default(),
                    r["points"],
                    r["lots"]
                );
            }
            t
        }
        BookFormat::Parquet => anyhow::bail!("the expiry forecast prints table, csv or json"),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(true)
}

/// Most days one `recon` prints.
const RECON_DAYS_MAX: i64 = 3660;

fn parse_date(flag: &str, s: &str) -> anyhow::Result<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").with_context(|| format!("{flag} {s}: expected YYYY-MM-DD"))
}

/// Prints the books; false when one does not balance or the check failed.
fn recon(args: ReconArgs) -> anyhow::Result<bool> {
    use points_ledger::books;
    let from = parse_date("--date", &args.date)?;
    let to = match &args.to {
        Some(t) => parse_date("--to", t)?,
        None => from,
    };
    if to < from {
        anyhow::bail!("--to {to} is before --date {from}");
    }
    if (to - from).num_days() >= RECON_DAYS_MAX {
        anyhow::bail!("at most {RECON_DAYS_MAX} days at once");
    }
    let events = args.log.open_events_read_only(&args.data_dir)?;
    let control = args.log.open_control_read_only(&args.data_dir)?;
    let registry = points_ledger::programmes::Registry::load(control.as_ref())?;
    if let Some(days) = args.expiry_forecast_days {
        return expiry_forecast(&args, &registry, from, days);
    }
    let views = match points_ledger::audit::open_views_read_only(&args.data_dir) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("no balance view to check against ({e}); folding the whole log");
            None
        }
    };
    let scratch = tempfile::tempdir()?;
    let (db, mismatches) = books::rebuild(events.as_ref(), &registry, views.as_ref(), &scratch.path().join("books"))?;
    let programmes: Vec<_> = registry
        .all_current()
        .into_iter()
        .filter(|p| args.tenant.as_deref().is_none_or(|t| t == p.tenant_id))
        .filter(|p| args.programme.as_deref().is_none_or(|x| x == p.programme_id))
        .collect();
    if programmes.is_empty() {
        anyhow::bail!("no programme matches (tenant {:?}, programme {:?})", args.tenant, args.programme);
    }
    let period = match args.period {
        PeriodArg::Day => books::Period::Day,
        PeriodArg::Month => books::Period::Month,
        PeriodArg::Quarter => books::Period::Quarter,
        PeriodArg::Year => books::Period::Year,
    };
    let mut rows = Vec::new();
    for p in &programmes {
        let mut days = Vec::new();
        let mut d = from;
        while d <= to {
            days.push(books::book_for_date(&db, &registry, p, events.partitions(), d)?);
            d = d.succ_opt().context("date out of range")?;
        }
        rows.extend(books::roll_up(&days, period)?);
    }
    if let BookFormat::Parquet = args.format {
        let path = args.output.as_ref().context("--format parquet needs --output FILE")?;
        points_ledger::export::books_parquet(&rows, path).with_context(|| format!("writing {}", path.display()))?;
    }
    let text = match args.format {
        BookFormat::Parquet => String::new(),
        BookFormat::Json => {
            rows.iter().map(|b| serde_json::to_string(&books::book_json(b))).collect::<Result<Vec<_>, _>>()?.join("\n")
                + "\n"
        }
        BookFormat::Csv => books::books_csv(&rows),
        BookFormat::Table => books::books_table(&rows),
    };
    match (&args.output, args.format) {
        (_, BookFormat::Parquet) => {}
        (Some(path), _) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?,
        (None, _) => print!("{text}"),
    }
    let unbalanced = rows.iter().filter(|b| !b.balanced).count();
    for m in &mismatches {
        eprintln!("MISMATCH: {m}");
    }
    if unbalanced > 0 {
        eprintln!("{unbalanced} book(s) do not balance");
    }
    if mismatches.is_empty() && unbalanced == 0 {
        eprintln!("{} book(s); all balance and agree with the balance view", rows.len());
    }
    Ok(mismatches.is_empty() && unbalanced == 0)
}

/// `--config FILE` (or POINTS_LEDGER_CONFIG): lines of `flag-name = value`
/// (`#` starts a comment), e.g. `kafka-brokers = kafka:9092`. A value from
/// the file applies where neither the flag nor its environment variable is
/// given, so flags > environment > file > defaults.
fn load_config_file() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut path = std::env::var("POINTS_LEDGER_CONFIG").ok();
    let mut given = std::collections::HashSet::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--config" {
            path = args.get(i + 1).cloned();
            i += 1;
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        } else if let Some(flag) = a.strip_prefix("--") {
            given.insert(flag.split('=').next().unwrap_or(flag).to_string());
        }
        i += 1;
    }
    let Some(path) = path else { return Ok(()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {path}"))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) =
            line.split_once('=').with_context(|| format!("{path}:{}: expected `flag-name = value`", n + 1))?;
        let key = key.trim().trim_start_matches("--");
        if !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || key.is_empty() {
            anyhow::bail!("{path}:{}: `{key}` is not a flag name (e.g. kafka-brokers)", n + 1);
        }
        let var = format!("POINTS_LEDGER_{}", key.replace('-', "_").to_ascii_uppercase());
        if !given.contains(key) && std::env::var_os(&var).is_none() {
            // Single-threaded here: nothing else reads the environment yet.
            std::env::set_var(var, value.trim().trim_matches('"'));
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = load_config_file() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Cmd::Serve(args) => rt.block_on(serve(args)),
        Cmd::Bench(args) => {
            let target = args.target.map(|t| if t.starts_with("http") { t } else { format!("http://{t}") });
            let opts = points_ledger::loadgen::Options {
                target,
                accounts: args.accounts,
                hot: args.hot.as_deref().map(points_ledger::loadgen::parse_hot).transpose()?,
                concurrency: args.concurrency as usize,
                duration_seconds: args.duration_seconds,
                mix: points_ledger::loadgen::parse_mix(&args.mix)?,
                json: args.json,
                seed: args.seed,
                log: match args.log.log {
                    LogKind::Embedded => LogConfig::Embedded,
                    LogKind::Kafka => LogConfig::Kafka(args.log.kafka(true)?),
                },
                partitions: args.log.partitions,
                batch: args.batch as usize,
                floors: args.floors,
            };
            rt.block_on(points_ledger::loadgen::run(opts)).map(|_| ())
        }
        Cmd::Replay(args) => {
            keep_freed_pages();
            replay(args)
        }
        Cmd::Explain(args) => explain(args),
        Cmd::Export(args) => export(args),
        Cmd::Recon(args) => {
            keep_freed_pages();
            if !recon(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Verify(args) => {
            keep_freed_pages();
            if !verify(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
