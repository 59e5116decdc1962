//! `points-ledger`: the service and its tools, as subcommands of one binary.
//! Flags only: each subcommand parses its flags into the options of the
//! module that does the work (`server`, `tools`, `bench`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

// mimalloc: under load, glibc malloc/free took ~21% of the server's CPU
// (BENCHMARKS.md); this allocator serves the Rust side.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use points_ledger::log::kafka::KafkaConfig;
use points_ledger::server::{self, Config, LogConfig};
use points_ledger::tools;

// The load generator is part of the binary, not of the service's library.
#[path = "../bench/mod.rs"]
mod bench;

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
    /// Replication factor of topics the service creates (with
    /// min.insync.replicas = 2 from 3 on).
    #[arg(long, env = "POINTS_LEDGER_KAFKA_REPLICATION_FACTOR", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=16))]
    kafka_replication_factor: i32,
    /// Let the service create topics with fewer than 3 replicas: a test or
    /// development broker only (one broker loses acknowledged events with its disk).
    #[arg(long, env = "POINTS_LEDGER_KAFKA_ALLOW_LOW_REPLICATION")]
    kafka_allow_low_replication: bool,
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
        if create_topics && self.kafka_replication_factor < 3 && !self.kafka_allow_low_replication {
            anyhow::bail!(
                "--kafka-replication-factor {} would keep the ledger's only copy of acknowledged events on fewer than 3 brokers; \
                 production topics need 3 replicas (min.insync.replicas 2). For a test or development broker, \
                 pass --kafka-allow-low-replication",
                self.kafka_replication_factor
            );
        }
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

    /// The log these flags name, for the tools (which never create topics).
    fn config(&self) -> anyhow::Result<LogConfig> {
        Ok(match self.log {
            LogKind::Embedded => LogConfig::Embedded,
            LogKind::Kafka => LogConfig::Kafka(self.kafka(false)?),
        })
    }

    /// Where a tool reads: `data_dir` and this log.
    fn source(&self, data_dir: &std::path::Path) -> anyhow::Result<tools::Source> {
        Ok(tools::Source { data_dir: data_dir.to_path_buf(), log: self.config()?, partitions: self.partitions })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the gRPC service.
    Serve(ServeArgs),
    /// Which instance writes which partition (any instance answers).
    Cluster(ClusterArgs),
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
    /// A period's recorded activities decided again under proposed rules
    /// (a programme in protobuf JSON), beside what they actually gave:
    /// points and growth by rule and day, members affected, level changes,
    /// refusals and the liability change. Reads the log; writes nothing.
    WhatIf(WhatIfArgs),
    /// A development CA with a server and a client certificate, for trying
    /// TLS out: writes ca.pem, ca-key.pem, server.pem, server-key.pem,
    /// client.pem and client-key.pem into --out.
    DevCerts(DevCertsArgs),
    /// The log's schema for consumers of the event topic: writes
    /// points/log/v1/log.proto and its descriptor set points-log-v1.binpb
    /// into --out.
    Schema(SchemaArgs),
}

#[derive(clap::Args)]
struct SchemaArgs {
    /// The directory to write into (created if need be).
    #[arg(long, env = "POINTS_LEDGER_SCHEMA_OUT")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct DevCertsArgs {
    /// The directory to write the six PEM files into (created if need be).
    #[arg(long, env = "POINTS_LEDGER_DEV_CERTS_OUT")]
    out: PathBuf,
    /// Another name of the server (DNS name or IP address), beside
    /// localhost and 127.0.0.1 (repeatable).
    #[arg(long = "host", env = "POINTS_LEDGER_DEV_CERTS_HOSTS", value_delimiter = ',')]
    hosts: Vec<String>,
    /// The client certificate's subject CN: the NAME of a `cert:NAME` line
    /// in the tokens file.
    #[arg(long, env = "POINTS_LEDGER_DEV_CERTS_CLIENT_NAME", default_value = tools::dev_certs::CLIENT_NAME_DEFAULT)]
    client_name: String,
    /// How long the certificates are valid.
    #[arg(long, env = "POINTS_LEDGER_DEV_CERTS_VALIDITY_DAYS", default_value_t = tools::dev_certs::VALIDITY_DAYS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=tools::dev_certs::VALIDITY_DAYS_MAX as i64))]
    validity_days: u32,
    /// Replace files that exist in --out (without it, an existing file is an error).
    #[arg(long, env = "POINTS_LEDGER_DEV_CERTS_FORCE")]
    force: bool,
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

#[derive(Clone, Copy, ValueEnum)]
enum WhatIfFormat {
    Table,
    Json,
}

#[derive(clap::Args)]
struct WhatIfArgs {
    /// The service's data directory (read only; the service may be running).
    #[arg(long, env = "POINTS_LEDGER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    log: LogArgs,
    #[arg(long, env = "POINTS_LEDGER_WHAT_IF_TENANT")]
    tenant: String,
    #[arg(long, env = "POINTS_LEDGER_WHAT_IF_PROGRAMME")]
    programme: String,
    /// The proposed programme: a `Programme` in protobuf JSON (as the
    /// `programme` of a ConfigureProgramme request), validated as
    /// ConfigureProgramme validates it.
    #[arg(long, env = "POINTS_LEDGER_WHAT_IF_RULES")]
    rules: PathBuf,
    /// The first day, YYYY-MM-DD in the programme's time zone.
    #[arg(long, env = "POINTS_LEDGER_WHAT_IF_FROM")]
    from: String,
    /// The last day (inclusive), YYYY-MM-DD.
    #[arg(long, env = "POINTS_LEDGER_WHAT_IF_TO")]
    to: String,
    #[arg(long, env = "POINTS_LEDGER_WHAT_IF_FORMAT", value_enum, default_value = "table")]
    format: WhatIfFormat,
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
    /// HOST:PORT of a running service (several, comma-separated: the
    /// instances of a cluster, connections spread over them); without it, a
    /// server is started on the embedded log in a temporary directory.
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
    /// Operation weights: earn, spend, reserve, refund, query, activity.
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
    /// What the accounts the writers keep between batches (decoded, and as
    /// one row each) may weigh in all, in MiB (the store has every account;
    /// a member the writers do not keep is read from it).
    #[arg(long, env = "POINTS_LEDGER_ACCOUNT_CACHE_MB", default_value_t = (points_ledger::writer::WRITER_CACHE_BYTES >> 20) as u64, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    account_cache_mb: u64,
    /// Commands a writer decides and appends together at most.
    #[arg(long, env = "POINTS_LEDGER_BATCH_COMMANDS_MAX", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    batch_commands_max: u64,
    /// Calls in flight at most, over every connection; beyond it a call is
    /// answered RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "POINTS_LEDGER_REQUESTS_IN_FLIGHT_MAX", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    requests_in_flight_max: u64,
    /// Longest a call may take (DEADLINE_EXCEEDED after it).
    #[arg(long, env = "POINTS_LEDGER_REQUEST_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    request_timeout_ms: u64,
    /// How long a feed subscriber may take no items while some wait before
    /// it is cut off (RESOURCE_EXHAUSTED, SUBSCRIBER_TOO_SLOW).
    #[arg(long, env = "POINTS_LEDGER_FEED_STALL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    feed_stall_ms: u64,
    /// Tokens file (`TOKEN TENANT[,TENANT...]|* [admin]` or `cert:NAME TENANTS|* [admin]` per line);
    /// without it, --clients-file and --tls-client-ca, access is open.
    /// Reloaded on SIGHUP and when it changes.
    #[arg(long, env = "POINTS_LEDGER_AUTH_TOKENS_FILE", conflicts_with = "clients_file")]
    auth_tokens_file: Option<PathBuf>,
    /// Clients file: `NAME token:TOKEN|cert:NAME TENANTS|* PROGRAMMES|* OPERATIONS|*`
    /// per line, operations among earn, spend, read, admin, finance.
    /// Reloaded on SIGHUP and when it changes.
    #[arg(long, env = "POINTS_LEDGER_CLIENTS_FILE")]
    clients_file: Option<PathBuf>,
    /// How log lines are written to stderr: text, or one JSON object per line.
    #[arg(long, env = "POINTS_LEDGER_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
    /// Export traces (a call's span, its writer batch and log append) to
    /// this OpenTelemetry collector over OTLP/gRPC, e.g. http://127.0.0.1:4317.
    #[arg(long, env = "POINTS_LEDGER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Address of the admin HTTP listener: /metrics (Prometheus), /healthz,
    /// /readyz, /console. `off` for none.
    #[arg(long, env = "POINTS_LEDGER_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    admin_listen: String,
    /// Serve without access control on an address beyond loopback
    /// (anyone who reaches the port may do everything).
    #[arg(long, env = "POINTS_LEDGER_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Serve TLS with this certificate chain (PEM; reloaded on SIGHUP).
    #[arg(long, env = "POINTS_LEDGER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; reloaded on SIGHUP).
    #[arg(long, env = "POINTS_LEDGER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM; mutual TLS;
    /// reloaded on SIGHUP). A certificate's CN or SAN names its client in
    /// the tokens file (`cert:NAME`).
    #[arg(long, env = "POINTS_LEDGER_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// The CA other instances' certificates are checked against when this
    /// one forwards to them (default: --tls-client-ca).
    #[arg(long, env = "POINTS_LEDGER_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// The address other instances reach this one at (default: the listen address).
    #[arg(long, env = "POINTS_LEDGER_ADVERTISE")]
    advertise: Option<String>,
    /// With --log kafka: the consumer group the instances on the topic share
    /// the partitions in (default `points-ledger.<topic>`).
    #[arg(long, env = "POINTS_LEDGER_KAFKA_GROUP")]
    kafka_group: Option<String>,
    /// With --log kafka: how long the group waits for a silent instance
    /// before its partitions move to the others.
    #[arg(long, env = "POINTS_LEDGER_KAFKA_SESSION_TIMEOUT_MS", default_value_t = server::SESSION_TIMEOUT_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1000..=300_000))]
    kafka_session_timeout_ms: u64,
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// Any instance of the cluster.
    #[arg(long, env = "POINTS_LEDGER_TARGET", default_value = "127.0.0.1:50051")]
    target: String,
    /// Print the answer as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Sent as `authorization: Bearer TOKEN` (the service needs an admin
    /// client allowed every tenant when access control is on).
    #[arg(long, env = "POINTS_LEDGER_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Connect with TLS, checking the instance's certificate against this CA (PEM).
    #[arg(long = "tls-ca", env = "POINTS_LEDGER_TARGET_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM; with --tls-ca and --tls-key).
    #[arg(long = "tls-cert", env = "POINTS_LEDGER_TARGET_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long = "tls-key", env = "POINTS_LEDGER_TARGET_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is
/// called, not when the future is first polled: a signal that comes right
/// after the service says it listens stops it cleanly too.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = term.recv() => {},
            }
            tracing::info!("shutting down");
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::new(&args.data_dir);
    config.partitions = args.log.partitions;
    if let LogKind::Kafka = args.log.log {
        config.log = LogConfig::Kafka(args.log.kafka(true)?);
        config.cluster = Some(server::ClusterConfig {
            group: args
                .kafka_group
                .clone()
                .unwrap_or_else(|| points_ledger::log::kafka::group::GroupConfig::default_group(&args.log.kafka_topic)),
            session_timeout: std::time::Duration::from_millis(args.kafka_session_timeout_ms),
        });
    }
    config.writer.advertise = args.advertise.clone().unwrap_or_default();
    config.writer.batch_commands_max = args.batch_commands_max as usize;
    config.account_cache_bytes = (args.account_cache_mb as usize) << 20;
    config.limits.requests_in_flight_max = args.requests_in_flight_max as usize;
    config.limits.request_timeout = std::time::Duration::from_millis(args.request_timeout_ms);
    config.limits.feed_stall = std::time::Duration::from_millis(args.feed_stall_ms);
    config.admin_listen = match args.admin_listen.as_str() {
        "off" => None,
        addr => Some(addr.parse().with_context(|| format!("--admin-listen {addr}: expected HOST:PORT or off"))?),
    };
    let auth_file = match (&args.clients_file, &args.auth_tokens_file) {
        (Some(path), _) => Some(server::AuthFile { path: path.clone(), clients: true }),
        (None, Some(path)) => Some(server::AuthFile { path: path.clone(), clients: false }),
        (None, None) => None,
    };
    if let Some(file) = &auth_file {
        config.auth = file.load()?;
    }
    config.auth_file = auth_file;
    let access_control = config.auth_file.is_some() || args.tls_client_ca.is_some();
    server::check_exposure(args.listen, access_control, args.insecure_no_auth)?;
    // The admin listener serves the console, whose actions adjust accounts.
    if let Some(admin) = config.admin_listen {
        server::check_exposure(admin, access_control, args.insecure_no_auth)?;
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let files = server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
            ca: args.tls_ca.clone(),
        };
        config.tls = Some(std::sync::Arc::new(server::tls::Tls::load(files)?));
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    // Scripts and tests read this line to learn the port (e.g. with --listen 127.0.0.1:0).
    let shutdown = shutdown_signal()?;
    println!("points-ledger listening on {}", listener.local_addr()?);
    server::run(listener, config, shutdown).await
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
    if let Err(e) = load_config_file() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (format, otlp) = match &cli.command {
        Cmd::Serve(args) => (args.log_format.into(), args.otlp_endpoint.clone()),
        _ => (points_ledger::telemetry::LogFormat::Text, None),
    };
    let telemetry = {
        let _runtime = rt.enter();
        points_ledger::telemetry::init(format, otlp.as_deref())?
    };
    let done = run(cli, &rt);
    telemetry.shutdown();
    done
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for points_ledger::telemetry::LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => points_ledger::telemetry::LogFormat::Text,
            LogFormatArg::Json => points_ledger::telemetry::LogFormat::Json,
        }
    }
}

fn run(cli: Cli, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Serve(args) => rt.block_on(serve(args)),
        Cmd::Cluster(args) => {
            let answer = rt.block_on(server::describe_cluster(&args.target, &args.client()?))?;
            print!("{}", if args.json { tools::cluster::json(&answer) } else { tools::cluster::table(&answer) });
            Ok(())
        }
        Cmd::Bench(args) => rt.block_on(bench::loadgen::run(args.options()?)).map(|_| ()),
        Cmd::Replay(args) => {
            keep_freed_pages();
            let until_time =
                args.until_time.as_deref().map(|t| tools::rfc3339_millis("--until-time", t)).transpose()?;
            let views = match args.views {
                ReplayViews::All => tools::replay::Views::All,
                ReplayViews::Balances => tools::replay::Views::Balances,
                ReplayViews::Books => tools::replay::Views::Books,
            };
            let opts =
                tools::replay::Options { into: args.into, until_position: args.until_position, until_time, views };
            tools::replay::run(&args.log.source(&args.data_dir)?, opts)
        }
        Cmd::Explain(args) => {
            let key = tools::parse_account("--account", &args.account)?;
            let as_of = args.as_of.as_deref().map(|t| tools::rfc3339_millis("--as-of", t)).transpose()?;
            tools::explain::run(&args.log.source(&args.data_dir)?, &key, as_of, args.as_of_position)
        }
        Cmd::Export(args) => {
            let filter = tools::export::Filter {
                tenant: args.tenant.clone(),
                programme: args.programme.clone(),
                account: args.account.as_deref().map(|a| tools::parse_account("--account", a)).transpose()?,
                from: args.from.as_deref().map(|t| tools::rfc3339_millis("--from", t)).transpose()?,
                to: args.to.as_deref().map(|t| tools::rfc3339_millis("--to", t)).transpose()?,
            };
            let format = match args.format {
                EventFormat::Jsonl => tools::export::EventFormat::Jsonl,
                EventFormat::Parquet => tools::export::EventFormat::Parquet,
            };
            tools::export::run(&args.log.source(&args.data_dir)?, format, &args.output, &filter)
        }
        Cmd::WhatIf(args) => {
            keep_freed_pages();
            let opts = args.options()?;
            tools::what_if::run(&args.log.source(&args.data_dir)?, &opts)
        }
        Cmd::Recon(args) => {
            keep_freed_pages();
            let source = args.log.source(&args.data_dir)?;
            exit_unless(tools::recon::run(&source, &args.options()?)?)
        }
        Cmd::Verify(args) => {
            keep_freed_pages();
            exit_unless(tools::verify::run(&args.log.source(&args.data_dir)?)?)
        }
        Cmd::DevCerts(args) => {
            for path in tools::dev_certs::run(&args.options())? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Cmd::Schema(args) => {
            for path in tools::schema::run(&args.out)? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}

/// Exits 1 when a check failed (the tool has said why).
fn exit_unless(ok: bool) -> anyhow::Result<()> {
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

impl ClusterArgs {
    /// The token and TLS files, read.
    fn client(&self) -> anyhow::Result<server::ClientOptions> {
        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(server::ClientOptions {
            auth_token: self.auth_token.clone(),
            tls_ca_pem: self.tls_ca.as_ref().map(read).transpose()?,
            tls_identity_pem: match (&self.tls_cert, &self.tls_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
        })
    }
}

impl DevCertsArgs {
    fn options(self) -> tools::dev_certs::Options {
        tools::dev_certs::Options {
            out: self.out,
            hosts: self.hosts,
            client_name: self.client_name,
            validity_days: self.validity_days,
            force: self.force,
        }
    }
}

impl WhatIfArgs {
    fn options(&self) -> anyhow::Result<tools::what_if::Options> {
        Ok(tools::what_if::Options {
            tenant: self.tenant.clone(),
            programme: self.programme.clone(),
            rules: self.rules.clone(),
            from: tools::parse_date("--from", &self.from)?,
            to: tools::parse_date("--to", &self.to)?,
            format: match self.format {
                WhatIfFormat::Table => tools::what_if::Format::Table,
                WhatIfFormat::Json => tools::what_if::Format::Json,
            },
        })
    }
}

impl ReconArgs {
    fn options(&self) -> anyhow::Result<tools::recon::Options> {
        let from = tools::parse_date("--date", &self.date)?;
        Ok(tools::recon::Options {
            from,
            to: self.to.as_deref().map(|t| tools::parse_date("--to", t)).transpose()?.unwrap_or(from),
            tenant: self.tenant.clone(),
            programme: self.programme.clone(),
            format: match self.format {
                BookFormat::Table => tools::recon::BookFormat::Table,
                BookFormat::Csv => tools::recon::BookFormat::Csv,
                BookFormat::Json => tools::recon::BookFormat::Json,
                BookFormat::Parquet => tools::recon::BookFormat::Parquet,
            },
            output: self.output.clone(),
            period: match self.period {
                PeriodArg::Day => points_ledger::finance::reports::Period::Day,
                PeriodArg::Month => points_ledger::finance::reports::Period::Month,
                PeriodArg::Quarter => points_ledger::finance::reports::Period::Quarter,
                PeriodArg::Year => points_ledger::finance::reports::Period::Year,
            },
            expiry_forecast_days: self.expiry_forecast_days,
        })
    }
}

impl BenchArgs {
    fn options(self) -> anyhow::Result<bench::loadgen::Options> {
        let target = self.target.map(|ts| {
            ts.split(',')
                .map(|t| if t.starts_with("http") { t.to_string() } else { format!("http://{t}") })
                .collect::<Vec<_>>()
                .join(",")
        });
        Ok(bench::loadgen::Options {
            target,
            accounts: self.accounts,
            hot: self.hot.as_deref().map(bench::loadgen::parse_hot).transpose()?,
            concurrency: self.concurrency as usize,
            duration_seconds: self.duration_seconds,
            mix: bench::loadgen::parse_mix(&self.mix)?,
            json: self.json,
            seed: self.seed,
            log: match self.log.log {
                LogKind::Embedded => LogConfig::Embedded,
                // The bench makes its own topic, one replica, on whatever
                // broker it is given: a test by definition.
                LogKind::Kafka => {
                    let mut log = self.log.clone();
                    log.kafka_allow_low_replication = true;
                    log.kafka_replication_factor = 1;
                    LogConfig::Kafka(log.kafka(true)?)
                }
            },
            partitions: self.log.partitions,
            batch: self.batch as usize,
            floors: self.floors,
        })
    }
}
