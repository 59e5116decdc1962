//! Wiring: opens the log, the stores and the registry, starts the writers
//! and the reconciliation consumer, and serves gRPC on a listener it is
//! given until a shutdown future completes (mini-redis's
//! `server::run(listener, shutdown)`), so tests run it on `127.0.0.1:0` and
//! stop it cleanly. Shutdown stops accepting calls, lets writers finish
//! queued batches, stops the consumer and flushes. With TLS (`tls`), the
//! listener's connections are handshaken first, and SIGHUP reloads the
//! certificates.

pub mod observe;
pub mod sample;
pub mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::api::forward::Forwarder;
use crate::api::{AdminService, Auth, ClusterService, FeedService, Ledger, LedgerService, ReconciliationService};
use crate::clock::{Clock, SystemClock};
use crate::finance::raiser::{Raiser, RaiserParts};
use crate::finance::reconciler::Reconciler;
use crate::log::embedded::EmbeddedLog;
use crate::log::kafka::group::{GroupConfig as GroupSettings, GroupMember};
use crate::log::kafka::{KafkaConfig, KafkaLog};
use crate::log::EventLog;
use crate::programmes::Programmes;
use crate::proto as pb;
use crate::store::Db;
use crate::writer::{WriterConfig, Writers};

/// Where the events go.
#[derive(Clone, Debug)]
pub enum LogConfig {
    /// The embedded log under the data directory.
    Embedded,
    /// A Kafka topic (account partitions) and `<topic>-control` (one partition).
    Kafka(KafkaConfig),
}

#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Account partitions of the log (fixed when the log is created).
    pub partitions: u32,
    pub log: LogConfig,
    pub writer: WriterConfig,
    /// What the accounts the writers keep may weigh in all, in bytes: each
    /// partition's writer gets its share, at least
    /// [`crate::writer::CACHE_BYTES_PARTITION_MIN`], or all of this when it
    /// is less (an instance of a cluster uses the shares of the partitions
    /// it writes; the store has every account).
    pub account_cache_bytes: usize,
    pub auth: Auth,
    pub clock: Arc<dyn Clock>,
    /// How often the reconciliation consumer compares the books with the
    /// balance view (a scan of every account), when something changed, at
    /// the most: a slow check puts the next one further off.
    pub books_check_interval: Duration,
    /// The bench's no-database bound only (never the default, no flag):
    /// the writers', views' and books' databases drop every write.
    pub discard_database_writes: bool,
    /// On Kafka: share the partitions with the other instances of a
    /// consumer group (None: this instance writes every partition).
    pub cluster: Option<ClusterConfig>,
    /// TLS on the listener, and for forwarding (None: plain text).
    pub tls: Option<Arc<tls::Tls>>,
    /// What one listener takes at most.
    pub limits: ServerLimits,
    /// The admin HTTP listener's address (metrics, health, the console);
    /// None: no admin listener (`run` only; tests bind their own).
    pub admin_listen: Option<std::net::SocketAddr>,
    /// The file `auth` was read from, read again on SIGHUP and when it
    /// changes (None: the rules never change).
    pub auth_file: Option<AuthFile>,
}

/// A file of access rules: a clients file, or an older tokens file.
#[derive(Clone, Debug)]
pub struct AuthFile {
    pub path: PathBuf,
    /// A clients file (`--clients-file`); else a tokens file.
    pub clients: bool,
}

impl AuthFile {
    pub fn load(&self) -> anyhow::Result<Auth> {
        use anyhow::Context;
        let text = std::fs::read_to_string(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        let parsed = if self.clients { Auth::parse_clients(&text) } else { Auth::parse(&text) };
        parsed.with_context(|| format!("reading {}", self.path.display()))
    }

    /// What tells that the file changed: its modification time and length.
    fn stamp(&self) -> Option<(std::time::SystemTime, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

/// The gRPC listener's bounds: a caller that opens more than this, or a
/// connection that goes quiet, is cut off rather than queued without bound.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Calls in flight across every connection; beyond it a call is answered
    /// RESOURCE_EXHAUSTED at once (shed, not queued).
    pub requests_in_flight_max: usize,
    /// Longest a call may take before it is answered DEADLINE_EXCEEDED
    /// (a caller's shorter `grpc-timeout` wins).
    pub request_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub streams_per_connection_max: u32,
    /// A connection is asked to go away after this (clients reconnect,
    /// which also spreads them over instances behind a balancer).
    pub connection_age_max: Duration,
    /// HTTP/2 pings on a quiet connection, and how long an answer may take
    /// before the connection is closed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// The largest message a call may send or receive.
    pub message_bytes_max: usize,
    /// How long a feed subscriber may leave its buffer full before it is
    /// cut off (`SUBSCRIBER_TOO_SLOW`).
    pub feed_stall: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            requests_in_flight_max: 4096,
            request_timeout: Duration::from_secs(30),
            streams_per_connection_max: 1024,
            connection_age_max: Duration::from_secs(30 * 60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            message_bytes_max: 16 << 20,
            feed_stall: crate::feed::FEED_STALL_DEFAULT,
        }
    }
}

/// How an instance joins its cluster (ARCHITECTURE.md, "A cluster on Kafka").
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The consumer group (default `points-ledger.<topic>`).
    pub group: String,
    /// How long the group waits for a silent instance before it moves its
    /// partitions (librdkafka's `session.timeout.ms`).
    pub session_timeout: Duration,
}

/// Default of [`ClusterConfig::session_timeout`]: a SIGKILLed instance's
/// partitions move after this (librdkafka's own default is 45 s).
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 6_000;

/// Default of [`Config::books_check_interval`].
pub const BOOKS_CHECK_INTERVAL_SECONDS: u64 = 60;

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            partitions: 4,
            log: LogConfig::Embedded,
            writer: WriterConfig::default(),
            account_cache_bytes: crate::writer::WRITER_CACHE_BYTES,
            auth: Auth::open(),
            clock: Arc::new(SystemClock),
            books_check_interval: Duration::from_secs(BOOKS_CHECK_INTERVAL_SECONDS),
            discard_database_writes: false,
            cluster: None,
            tls: None,
            limits: ServerLimits::default(),
            admin_listen: None,
            auth_file: None,
        }
    }
}

/// The logs of a data directory: account partitions and the control stream.
pub struct Logs {
    pub events: Arc<dyn EventLog>,
    pub control: Arc<dyn EventLog>,
}

pub fn open_embedded_logs(data_dir: &Path, partitions: u32) -> anyhow::Result<Logs> {
    Ok(Logs {
        events: Arc::new(EmbeddedLog::open(&data_dir.join("log").join("events"), partitions)?),
        control: Arc::new(EmbeddedLog::open(&data_dir.join("log").join("control"), 1)?),
    })
}

/// The control topic that goes with an account topic.
pub fn control_topic(topic: &str) -> String {
    format!("{topic}-control")
}

/// Opens (creating if need be) the account topic and its control topic.
pub fn open_kafka_logs(kafka: &KafkaConfig) -> anyhow::Result<Logs> {
    let events = KafkaLog::open(kafka.clone())?;
    let mut control = kafka.clone();
    control.topic = control_topic(&kafka.topic);
    control.partitions = 1;
    let control = KafkaLog::open(control)?;
    Ok(Logs { events: Arc::new(events), control: Arc::new(control) })
}

/// One of a data directory's logs (`events` or `control`), or its Kafka
/// topic, read only and creating nothing: for the tools, beside a running
/// service.
fn open_read_only(
    log: &LogConfig,
    data_dir: &Path,
    name: &str,
    kafka: KafkaConfig,
) -> anyhow::Result<Box<dyn EventLog>> {
    use anyhow::Context;
    Ok(match log {
        LogConfig::Embedded => Box::new(
            EmbeddedLog::open_read_only(&data_dir.join("log").join(name))
                .with_context(|| format!("opening the {name} log in {}", data_dir.display()))?,
        ),
        LogConfig::Kafka(_) => Box::new(KafkaLog::open(KafkaConfig { create_topics: false, ..kafka })?),
    })
}

/// The account log, read only (see [`open_read_only`]).
pub fn open_events_read_only(log: &LogConfig, data_dir: &Path, partitions: u32) -> anyhow::Result<Box<dyn EventLog>> {
    let kafka = match log {
        LogConfig::Kafka(k) => KafkaConfig { partitions, ..k.clone() },
        LogConfig::Embedded => KafkaConfig::new("", "", partitions),
    };
    open_read_only(log, data_dir, "events", kafka)
}

/// The control stream (programme rules), read only (see [`open_read_only`]).
pub fn open_control_read_only(log: &LogConfig, data_dir: &Path) -> anyhow::Result<Box<dyn EventLog>> {
    let kafka = match log {
        LogConfig::Kafka(k) => KafkaConfig { topic: control_topic(&k.topic), partitions: 1, ..k.clone() },
        LogConfig::Embedded => KafkaConfig::new("", "", 1),
    };
    open_read_only(log, data_dir, "control", kafka)
}

/// Waits until a server's health service says SERVING (every partition has
/// caught up with the log), for clients that start one (the bench, tests).
pub async fn wait_serving(channel: tonic::transport::Channel, timeout: Duration) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let started = std::time::Instant::now();
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: "points.v1.PointsLedger".into() })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(ServingStatus::Serving as i32)) {
            return Ok(());
        }
        if started.elapsed() > timeout {
            anyhow::bail!("the server did not become ready within {} s ({status:?})", timeout.as_secs());
        }
        tokio::time::sleep(WAIT_SERVING_POLL).await;
    }
}

/// How a tool reaches an instance: a bearer token, and TLS (PEM bytes).
/// No `Debug`: it holds a token and a private key.
#[derive(Clone, Default)]
pub struct ClientOptions {
    pub auth_token: Option<String>,
    /// Connect with TLS, checking the instance against this CA.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Present this certificate and key (mutual TLS).
    pub tls_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// Asks the instance at `target` (`HOST:PORT`) who writes which partition.
pub async fn describe_cluster(target: &str, options: &ClientOptions) -> anyhow::Result<pb::DescribeClusterResponse> {
    use anyhow::Context;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let scheme = if options.tls_ca_pem.is_some() { "https" } else { "http" };
    let url = if target.starts_with("http") { target.to_string() } else { format!("{scheme}://{target}") };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(ca) = &options.tls_ca_pem {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &options.tls_identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("connecting to {target}"))?;
    let mut client = pb::cluster_client::ClusterClient::new(channel);
    let mut request = tonic::Request::new(pb::DescribeClusterRequest {});
    if let Some(token) = &options.auth_token {
        let value = format!("Bearer {token}").parse().context("the token is not a valid header value")?;
        request.metadata_mut().insert("authorization", value);
    }
    let answer = client.describe_cluster(request).await.with_context(|| format!("asking {target}"))?;
    Ok(answer.into_inner())
}

/// How often [`wait_serving`] asks.
const WAIT_SERVING_POLL: Duration = Duration::from_millis(50);

/// Opens the logs a configuration names.
pub fn open_logs(config: &Config) -> anyhow::Result<Logs> {
    match &config.log {
        LogConfig::Embedded => open_embedded_logs(&config.data_dir, config.partitions),
        LogConfig::Kafka(k) => {
            let mut k = k.clone();
            k.partitions = config.partitions;
            open_kafka_logs(&k)
        }
    }
}

/// Everything the service runs. Writers catch up with the log in the
/// background; [`Service::ready`] waits for them.
pub struct Service {
    pub ledger: Arc<Ledger>,
    programmes: Arc<Programmes>,
    writers: Arc<Writers>,
    reconciler: Reconciler,
    /// Raises members' alerts in the partitions this instance writes.
    raiser: Raiser,
    views: Arc<Db>,
    books: Arc<Db>,
    /// This instance's membership of its cluster's group (Kafka, in a cluster).
    member: std::sync::Mutex<Option<GroupMember>>,
    /// The listener's TLS settings (None: plain text).
    tls: Option<Arc<tls::Tls>>,
    limits: ServerLimits,
    pub metrics: crate::metrics::Metrics,
}

impl Service {
    pub fn start(config: &Config, logs: Logs) -> anyhow::Result<Service> {
        std::fs::create_dir_all(&config.data_dir)?;
        let metrics = config.writer.metrics.clone();
        logs.events.time_fsyncs(metrics.histogram(crate::metrics::FSYNC_SECONDS, &[]));
        let programmes = Arc::new(Programmes::open(logs.control.clone())?);
        remove_old_writer_state(&config.data_dir)?;
        let views = Arc::new(crate::projection::open_views(&config.data_dir.join("views"))?);
        if config.discard_database_writes {
            views.discard_writes();
        }
        let mut writer_config = config.writer.clone();
        let group = match (&config.cluster, &config.log) {
            (Some(cluster), LogConfig::Kafka(kafka)) => Some((cluster, kafka)),
            (Some(_), LogConfig::Embedded) => anyhow::bail!("a cluster needs the Kafka log (--log kafka)"),
            (None, _) => None,
        };
        writer_config.assigned_only = group.is_some();
        writer_config.cache_bytes_max = (config.account_cache_bytes / logs.events.partitions().max(1) as usize)
            .max(crate::writer::CACHE_BYTES_PARTITION_MIN.min(config.account_cache_bytes));
        let writers = Arc::new(Writers::start(
            logs.events.clone(),
            views.clone(),
            &programmes,
            config.clock.clone(),
            writer_config,
        )?);
        let member = match group {
            Some((cluster, kafka)) => Some(GroupMember::join(
                &KafkaConfig { partitions: config.partitions, ..kafka.clone() },
                &GroupSettings {
                    group: cluster.group.clone(),
                    member: config.writer.advertise.clone(),
                    session_timeout: cluster.session_timeout,
                },
                writers.ownership(),
            )?),
            None => None,
        };
        let books = open_books(config)?;
        let reconciler = Reconciler::start(
            logs.events.clone(),
            views.clone(),
            books.clone(),
            programmes.registry(),
            config.books_check_interval,
        )?;
        let ledger = Arc::new(Ledger {
            books: books.clone(),
            writers: writers.clone(),
            programmes: programmes.clone(),
            views: views.clone(),
            events: logs.events.clone(),
            control: logs.control.clone(),
            feed_stall: config.limits.feed_stall,
            stopping: Arc::default(),
            deliveries: Arc::default(),
            positions: writers.positions(),
            clock: config.clock.clone(),
            auth: auth_of(config),
            forwarder: Forwarder::new(config.tls.as_ref().and_then(|t| t.forward_settings())),
            metrics: metrics.clone(),
        });
        let raiser = start_raiser(&books, &writers, &programmes, config)?;
        let member = std::sync::Mutex::new(member);
        Ok(Service {
            raiser,
            ledger,
            programmes,
            writers,
            reconciler,
            views,
            books,
            member,
            tls: config.tls.clone(),
            limits: config.limits,
            metrics,
        })
    }

    /// Reads the TLS files again (SIGHUP): new handshakes, and connections
    /// to other instances made from now on, use them; on an error nothing
    /// changes. Nothing to do without TLS.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        tls.reload()?;
        self.ledger.forwarder.set_tls(tls.forward_settings());
        Ok(())
    }

    /// Leaves the cluster's group (a graceful stop): the writers finish what
    /// is queued and let their partitions go, which move to the other
    /// instances at once. Blocking. Nothing to do outside a cluster.
    pub fn leave_group(&self) {
        let member = self.member.lock().expect("member lock").take();
        if let Some(m) = member {
            tracing::info!("leaving the group; the partitions move to the other instances");
            m.leave();
        }
    }

    /// Waits until every partition's writer has caught up with the log (and
    /// claimed its partition, on Kafka). Before that, commands to a partition
    /// still catching up are answered UNAVAILABLE.
    pub async fn ready(&self) {
        self.writers.ready().await
    }

    /// Stops writers (after their queued batches), then the reconciliation
    /// consumer, and flushes.
    pub fn stop(self) {
        self.leave_group();
        drop(self.ledger);
        self.raiser.shutdown();
        match Arc::try_unwrap(self.writers) {
            Ok(w) => w.shutdown(),
            Err(_) => tracing::warn!("writers still referenced at shutdown"),
        }
        self.reconciler.shutdown();
        self.programmes.shutdown();
        for (name, db) in [("views", &self.views), ("books", &self.books)] {
            let (rows, bytes) = db.written();
            let by = db.written_by_cf().iter().map(|(cf, n)| format!("{cf}={n}")).collect::<Vec<_>>().join(" ");
            tracing::info!(database = name, rows, bytes, by_column_family = %by, "rows written since start");
            let _ = db.flush();
        }
    }
}

/// The writers' own database of builds before 2026-12-01: the state lives
/// with the views now (rebuilt from the log when they are old).
fn remove_old_writer_state(data_dir: &Path) -> anyhow::Result<()> {
    let old_writer_dir = data_dir.join("writer");
    if old_writer_dir.exists() {
        tracing::warn!(dir = %old_writer_dir.display(), "removing the writer state of an older build");
        std::fs::remove_dir_all(&old_writer_dir)?;
    }
    Ok(())
}

/// The worker raising members' alerts in the partitions written here.
fn start_raiser(
    books: &Arc<Db>,
    writers: &Arc<Writers>,
    programmes: &Arc<Programmes>,
    config: &Config,
) -> anyhow::Result<Raiser> {
    let (registry, clock) = (programmes.registry(), config.clock.clone());
    let programmes = programmes.clone();
    let metrics = config.writer.metrics.clone();
    Raiser::start(RaiserParts { books: books.clone(), writers: writers.clone(), registry, programmes, clock, metrics })
}

/// The reconciliation consumer's database.
fn open_books(config: &Config) -> anyhow::Result<Arc<Db>> {
    let books = Arc::new(crate::finance::books::open_books(&config.data_dir.join("books"))?);
    if config.discard_database_writes {
        books.discard_writes();
    }
    Ok(books)
}

/// The access control a configuration gives: its tokens file, and client
/// certificates when the listener verifies them.
fn auth_of(config: &Config) -> Auth {
    match &config.tls {
        Some(tls) if tls.mutual() => config.auth.clone().with_client_certificates(),
        _ => config.auth.clone(),
    }
}

/// Refuses to serve beyond loopback without access control (a tokens file
/// or client certificates) unless `insecure_no_auth` accepts the risk.
pub fn check_exposure(
    listen: std::net::SocketAddr,
    access_control: bool,
    insecure_no_auth: bool,
) -> anyhow::Result<()> {
    if listen.ip().is_loopback() || access_control || insecure_no_auth {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve on {listen} without access control: anyone who reaches it could adjust any account \
         and change programme rules. Give --clients-file FILE (or --auth-tokens-file FILE) or --tls-client-ca FILE (with --tls-cert and \
         --tls-key), or --insecure-no-auth to accept that risk"
    )
}

/// Keeps gRPC health for the ledger, the admin service and the server as a
/// whole ("") SERVING only while every partition this instance should write
/// takes commands (caught up, claimed), and NOT_SERVING whenever one does
/// not, for as long as it does not. Runs until aborted.
async fn follow_partitions(health: tonic_health::server::HealthReporter, ownership: Arc<crate::writer::Ownership>) {
    let mut serving = ownership.serving();
    loop {
        set_ledger_health(&health, serving).await;
        if serving {
            tracing::info!("every partition wanted here takes commands; serving");
        } else {
            tracing::info!("a partition wanted here does not take commands yet; health says NOT_SERVING");
        }
        serving = !serving;
        ownership.until_serving_is(serving).await;
    }
}

/// What the webhook delivery worker reads and writes.
fn webhook_parts(service: &Service) -> crate::webhook::worker::WorkerParts {
    let ledger = &service.ledger;
    crate::webhook::worker::WorkerParts {
        source: crate::feed::Source {
            events: ledger.events.clone(),
            views: ledger.views.clone(),
            positions: ledger.positions.clone(),
            stopping: ledger.stopping.clone(),
            control: ledger.control.clone(),
            registry: ledger.programmes.registry(),
        },
        registry: ledger.programmes.registry(),
        writers: ledger.writers.clone(),
        books: ledger.books.clone(),
        deliveries: ledger.deliveries.clone(),
        metrics: service.metrics.clone(),
    }
}

/// Sets the health of the ledger, the admin service and the server ("").
async fn set_ledger_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    for name in [
        "",
        <pb::points_ledger_server::PointsLedgerServer<LedgerService> as NamedService>::NAME,
        <pb::programme_admin_server::ProgrammeAdminServer<AdminService> as NamedService>::NAME,
    ] {
        health.set_service_status(name, status).await;
    }
}

/// Server reflection in both versions (older grpcurl asks v1alpha).
#[allow(clippy::type_complexity)]
fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So clients can decode google.rpc.ErrorInfo / BadRequest details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// Serves the gRPC services of `service` on `listener` until `shutdown`
/// (over TLS when the service was configured with it).
pub async fn serve(listener: TcpListener, service: &Service, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Streams (feed subscriptions) end when the service stops, so the
    // graceful shutdown does not wait for their subscribers.
    let stopping = service.ledger.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // The books are served from the start (they trail the log by design).
    health_reporter.set_serving::<pb::reconciliation_server::ReconciliationServer<ReconciliationService>>().await;
    // Every service is known to health before the first call is taken.
    set_ledger_health(&health_reporter, service.writers.ownership().serving()).await;
    let health_task = tokio::spawn(follow_partitions(health_reporter, service.writers.ownership()));
    let webhooks = tokio::spawn(crate::webhook::worker::run(webhook_parts(service), service.ledger.stopping.clone()));
    let sampler = tokio::spawn(sample::run(service.ledger.clone(), service.metrics.clone()));
    let methods = observe::Methods::of(&[
        pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let l = service.limits;
    let bytes = l.message_bytes_max;
    let router = tonic::transport::Server::builder()
        .timeout(l.request_timeout)
        .max_concurrent_streams(l.streams_per_connection_max)
        .max_connection_age(l.connection_age_max)
        .http2_keepalive_interval(Some(l.keepalive_interval))
        .http2_keepalive_timeout(Some(l.keepalive_timeout))
        // Outermost: every call is counted, those shed too.
        .layer(observe::ObserveLayer { metrics: service.metrics.clone(), methods })
        // A call beyond the global bound is refused at once.
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(l.requests_in_flight_max))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::points_ledger_server::PointsLedgerServer::new(LedgerService(service.ledger.clone()))
                .max_encoding_message_size(bytes)
                .max_decoding_message_size(bytes),
        )
        .add_service(
            pb::programme_admin_server::ProgrammeAdminServer::new(AdminService(service.ledger.clone()))
                .max_encoding_message_size(bytes)
                .max_decoding_message_size(bytes),
        )
        .add_service(
            pb::reconciliation_server::ReconciliationServer::new(ReconciliationService(service.ledger.clone()))
                .max_encoding_message_size(bytes)
                .max_decoding_message_size(bytes),
        )
        .add_service(pb::cluster_server::ClusterServer::new(ClusterService(service.ledger.clone())))
        .add_service(pb::feed_server::FeedServer::new(FeedService::new(service.ledger.clone())));
    let served = match &service.tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls::incoming(listener, tls.clone()), shutdown).await,
        // Replies go out at once: with Nagle's algorithm a small reply can
        // wait for the client's delayed acknowledgement (tonic sets this only
        // for listeners it binds itself).
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    };
    health_task.abort();
    let _ = health_task.await;
    // The worker stops at its next look (the stopping flag is set); a POST
    // in flight is dropped and sent again from the stored cursor next time.
    webhooks.abort();
    let _ = webhooks.await;
    sampler.abort();
    let _ = sampler.await;
    served?;
    Ok(())
}

impl Service {
    /// The admin listener's pages (metrics, health).
    pub fn admin_router(&self) -> axum::Router {
        crate::admin::router(crate::admin::AdminState {
            metrics: self.metrics.clone(),
            ownership: self.writers.ownership(),
            ledger: self.ledger.clone(),
            sessions: Default::default(),
        })
    }
}

/// Serves the admin listener's pages of `service` on `listener` until the
/// service stops taking calls (`stopping`).
pub fn spawn_admin(listener: TcpListener, service: &Service) -> tokio::task::JoinHandle<()> {
    let stopping = service.ledger.stopping.clone();
    let router = service.admin_router();
    tokio::spawn(crate::admin::serve(listener, router, async move {
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

/// Reloads the TLS files and the access rules on every SIGHUP until aborted.
async fn reload_on_hangup(service: Arc<Service>, auth_file: Option<AuthFile>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(h) => h,
            Err(e) => return tracing::error!(error = %e, "cannot listen for SIGHUP: nothing will be reloaded"),
        };
        while hangups.recv().await.is_some() {
            // A few small files: read on this thread, with the runtime told.
            match tokio::task::block_in_place(|| service.reload_tls()) {
                Ok(()) if service.tls.is_some() => {
                    tracing::info!("SIGHUP: reloaded the TLS certificate, key and CAs; new connections use them")
                }
                Ok(()) => {}
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "SIGHUP: reloading TLS failed; keeping the files loaded before"
                ),
            }
            if let Some(file) = &auth_file {
                tokio::task::block_in_place(|| reload_auth(&service, file, "SIGHUP"));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (service, auth_file);
}

/// How often the access rules' file is looked at for changes.
const AUTH_FILE_POLL: Duration = Duration::from_secs(2);

/// Reloads the access rules whenever their file changes, until aborted.
async fn reload_on_change(service: Arc<Service>, file: AuthFile) {
    let mut stamp = file.stamp();
    loop {
        tokio::time::sleep(AUTH_FILE_POLL).await;
        let now = file.stamp();
        if now.is_some() && now != stamp {
            stamp = now;
            tokio::task::block_in_place(|| reload_auth(&service, &file, "the file changed"));
        }
    }
}

/// Reads the access rules again; on an error the rules in force stay.
fn reload_auth(service: &Service, file: &AuthFile, why: &str) {
    match file.load() {
        Ok(auth) => {
            service.ledger.auth.replace(&auth);
            tracing::info!(file = %file.path.display(), why, "reloaded the access rules; calls from now on use them");
        }
        Err(e) => tracing::error!(
            file = %file.path.display(),
            why,
            error = format!("{e:#}"),
            "the access rules could not be reloaded; the rules loaded before stay in force"
        ),
    }
}

/// Says at start what access control is off, or cannot work.
fn warn_about_access(config: &Config, service: &Service) {
    if service.ledger.auth.is_open() {
        tracing::warn!(
            "no access control (no --clients-file or --auth-tokens-file, no --tls-client-ca): every caller may do everything, \
             including adjusting any account and changing programme rules"
        );
    }
    if config.auth.has_cert_lines() && !config.tls.as_ref().is_some_and(|t| t.mutual()) {
        tracing::warn!("the tokens file names certificates (`cert:` lines), but without --tls-client-ca none is ever verified: those lines grant nothing");
    }
}

/// Starts everything on the configured log and serves until `shutdown`.
pub async fn run(listener: TcpListener, mut config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if config.writer.advertise.is_empty() {
        config.writer.advertise = listener.local_addr()?.to_string();
    }
    if config.cluster.is_some() && config.tls.as_ref().is_some_and(|t| t.forward_settings().is_none()) {
        anyhow::bail!("a cluster serving TLS forwards over TLS: give --tls-ca FILE (or --tls-client-ca FILE)");
    }
    let logs = tokio::task::block_in_place(|| open_logs(&config))?;
    let service = Arc::new(Service::start(&config, logs)?);
    let admin = match config.admin_listen {
        Some(addr) => {
            use anyhow::Context;
            let l = TcpListener::bind(addr).await.with_context(|| format!("binding the admin listener {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "admin listener: /metrics /healthz /readyz");
            Some(spawn_admin(l, &service))
        }
        None => None,
    };
    tracing::info!(addr = %listener.local_addr()?, advertise = %config.writer.advertise, data_dir = %config.data_dir.display(), tls = config.tls.is_some(), "serving");
    warn_about_access(&config, &service);
    let hangups = (config.tls.is_some() || config.auth_file.is_some())
        .then(|| tokio::spawn(reload_on_hangup(service.clone(), config.auth_file.clone())));
    let watcher = config.auth_file.clone().map(|f| tokio::spawn(reload_on_change(service.clone(), f)));
    // A graceful stop hands the partitions over first, while this instance
    // still serves (and forwards) calls; then the server stops.
    let leaving = service.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = tokio::task::spawn_blocking(move || leaving.leave_group()).await;
    };
    let served = serve(listener, &service, shutdown).await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    for h in hangups.into_iter().chain(watcher) {
        h.abort();
        let _ = h.await;
    }
    let service = Arc::try_unwrap(service).map_err(|_| anyhow::anyhow!("the service is still in use at shutdown"))?;
    tokio::task::spawn_blocking(move || service.stop()).await?;
    served
}
