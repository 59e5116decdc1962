//! Test harness: the real service (embedded log, RocksDB, gRPC on
//! 127.0.0.1:0) in a temp dir, and clients for it.

#![allow(dead_code)]

/// Asserts that `call` fails with `code` (and `reason` when given) and that
/// the log did not grow.
#[allow(unused_macros)]
macro_rules! rejected {
    ($h:expr, $call:expr, $code:expr, $reason:expr) => {{
        let before = $h.records();
        let err = $call.await.expect_err("expected a rejection");
        assert_eq!(err.code(), $code, "{err:?}");
        if !$reason.is_empty() {
            assert_eq!(reason_of(&err), $reason, "{err:?}");
        }
        assert_eq!($h.records(), before, "a rejected command wrote to the log");
        err
    }};
}

pub mod broker;
pub mod cluster;
pub mod console;
pub mod hostile;
pub mod receiver;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use points_ledger::api::Auth;
use points_ledger::clock::{Clock, ManualClock};
use points_ledger::log::kafka::KafkaConfig;
use points_ledger::log::EventLog;
use points_ledger::proto as pb;
use points_ledger::proto::points_ledger_client::PointsLedgerClient;
use points_ledger::proto::programme_admin_client::ProgrammeAdminClient;
use points_ledger::server::{open_logs, serve, Config, LogConfig, Service};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct Harness {
    pub addr: SocketAddr,
    /// The admin HTTP listener (metrics, health, the console).
    pub admin_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub events: Arc<dyn EventLog>,
    pub clock: Arc<ManualClock>,
    /// The broker under the Kafka run of the suite.
    pub broker: Option<broker::Tansu>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Brokers kept running between `stop_for_restart` and the next start in the same dir.
static PARKED: std::sync::Mutex<Vec<(std::path::PathBuf, broker::Tansu)>> = std::sync::Mutex::new(Vec::new());

/// 2026-03-10T00:00:00Z
pub const T0: i64 = 1_773_100_800_000;

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness::start_in(dir, ManualClock::new(T0), tune).await
    }

    pub async fn start_in(dir: tempfile::TempDir, clock: Arc<ManualClock>, tune: impl FnOnce(&mut Config)) -> Harness {
        Harness::start_wrapped(dir, clock, tune, |log| log).await
    }

    /// Starts with the account log wrapped (for fault injection).
    pub async fn start_wrapped(
        dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        tune: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Arc<dyn EventLog>) -> Arc<dyn EventLog>,
    ) -> Harness {
        Harness::start_serving(dir, clock, tune, wrap, true).await
    }

    /// [`Harness::start_wrapped`], serving calls at once when `wait` is
    /// false (before every partition takes commands).
    pub async fn start_serving(
        dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        tune: impl FnOnce(&mut Config),
        wrap: impl FnOnce(Arc<dyn EventLog>) -> Arc<dyn EventLog>,
        wait: bool,
    ) -> Harness {
        let mut config = Config::new(dir.path());
        config.partitions = 3;
        config.clock = clock.clone() as Arc<dyn Clock>;
        config.writer.tick_interval_ms = 50;
        tune(&mut config);
        // The Kafka run of the suite: a broker of its own under the test's dir
        // (unless the test chose its log itself).
        let parked = {
            let mut parked = PARKED.lock().unwrap();
            let i = parked.iter().position(|(d, _)| d == dir.path());
            i.map(|i| parked.remove(i).1)
        };
        let broker = (broker::kafka_suite() && matches!(config.log, LogConfig::Embedded))
            .then(|| parked.unwrap_or_else(|| broker::Tansu::start(&dir.path().join("tansu"))));
        if let Some(b) = &broker {
            config.log = LogConfig::Kafka(KafkaConfig::new(&b.bootstrap(), "points", config.partitions));
        }
        let mut logs = tokio::task::block_in_place(|| open_logs(&config)).unwrap();
        logs.events = wrap(logs.events);
        let events = logs.events.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Its claims say where it serves, so other instances can forward here.
        config.writer.advertise = addr.to_string();
        let service = Service::start(&config, logs).unwrap();
        if wait {
            service.ready().await;
        }
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let admin = points_ledger::server::spawn_admin(admin_listener, &service);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, &service, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
            let _ = admin.await;
            tokio::task::spawn_blocking(move || service.stop()).await.unwrap();
        });
        Harness { addr, admin_addr, dir, events, clock, broker, shutdown: Some(tx), task: Some(task) }
    }

    /// Stops the service but keeps its broker (if any) running for the
    /// restart that follows with the same directory: the log stays where it
    /// is, as a Kafka cluster would across a service restart.
    pub async fn stop_for_restart(mut self) -> (tempfile::TempDir, Arc<ManualClock>) {
        let broker = self.broker.take();
        let (dir, clock) = self.stop().await;
        if let Some(b) = broker {
            PARKED.lock().unwrap().push((dir.path().to_path_buf(), b));
        }
        (dir, clock)
    }

    /// Stops the service and hands over its broker (if any), still running,
    /// for tools that read the log afterwards; it stops when dropped.
    pub async fn stop_keep_broker(mut self) -> (tempfile::TempDir, Option<broker::Tansu>) {
        let broker = self.broker.take();
        let (dir, _) = self.stop().await;
        (dir, broker)
    }

    /// The log flags a command-line tool needs to read this service's log.
    pub fn log_flags(&self) -> Vec<String> {
        let mut flags = vec!["--partitions".to_string(), self.events.partitions().to_string()];
        if let Some(b) = &self.broker {
            flags.extend(
                ["--log", "kafka", "--kafka-brokers", &b.bootstrap(), "--kafka-topic", "points"].map(String::from),
            );
        }
        flags
    }

    /// Stops the service cleanly and returns its data directory and clock.
    pub async fn stop(mut self) -> (tempfile::TempDir, Arc<ManualClock>) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        if let Some(mut b) = self.broker.take() {
            tokio::task::spawn_blocking(move || b.stop()).await.unwrap();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.clock.clone())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A page of the admin listener: its status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.admin_addr)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn ledger(&self) -> PointsLedgerClient<Channel> {
        PointsLedgerClient::connect(self.url()).await.unwrap()
    }

    pub async fn admin(&self) -> ProgrammeAdminClient<Channel> {
        ProgrammeAdminClient::connect(self.url()).await.unwrap()
    }

    pub async fn reconciliation(&self) -> pb::reconciliation_client::ReconciliationClient<Channel> {
        pb::reconciliation_client::ReconciliationClient::connect(self.url()).await.unwrap()
    }

    /// Records in the account log, all partitions.
    pub fn records(&self) -> u64 {
        (0..self.events.partitions()).map(|p| self.events.end_offset(p).unwrap()).sum()
    }

    /// Every counted account record of `member` in the log, in order.
    pub fn records_of(&self, member: &str) -> Vec<points_ledger::log::record::AccountRecord> {
        use points_ledger::log::arbiter::{Admitted, Arbiter, Home};
        let mut found = Vec::new();
        for p in 0..self.events.partitions() {
            let home = Home { partition: p, partitions: self.events.partitions() };
            let end = self.events.end_offset(p).unwrap();
            let mut reader = self.events.reader(p, 0).unwrap();
            let mut arbiter = Arbiter::default();
            loop {
                let batch = points_ledger::log::read_towards(reader.as_mut(), end, 10_000).unwrap();
                if batch.is_empty() {
                    break;
                }
                for e in batch {
                    if let Admitted::Record(r) = arbiter.admit_bytes(&e.payload, home) {
                        if r.account.member_id == member {
                            found.push(r);
                        }
                    }
                }
            }
        }
        found
    }
}

/// How many lots each of `member`'s `PointsExpired` events lists, in order.
pub fn expiry_lot_counts(h: &Harness, member: &str) -> Vec<usize> {
    let events = h.records_of(member).into_iter().flat_map(|r| r.events);
    events
        .filter_map(|e| match e {
            points_ledger::domain::Event::PointsExpired { lots, .. } => Some(lots.len()),
            _ => None,
        })
        .collect()
}

pub fn auth(text: &str) -> Auth {
    Auth::parse(text).unwrap()
}

/// `message` sent with `authorization: Bearer TOKEN`.
pub fn as_client<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

pub fn account(member: &str) -> Option<pb::AccountKey> {
    Some(pb::AccountKey { tenant_id: "shop".into(), programme_id: "points".into(), member_id: member.into() })
}

pub fn programme() -> pb::Programme {
    pb::Programme {
        tenant_id: "shop".into(),
        programme_id: "points".into(),
        unit_name: "积分".into(),
        points_per_cash_unit: 100,
        validity_days: 365,
        validity_rounding: pb::ValidityRounding::EndOfMonth as i32,
        reminder_days: 15,
        time_zone: "Asia/Shanghai".into(),
        clawback_policy: pb::ClawbackPolicy::AllowDebt as i32,
        ..Default::default()
    }
}

pub async fn configure(h: &Harness, p: pb::Programme) -> pb::ConfigureProgrammeReply {
    h.admin()
        .await
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: format!("cfg-{}-{}", p.programme_id, p.validity_days),
            programme: Some(p),
            operator: "ops".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub fn earn(id: &str, member: &str, points: i64) -> pb::EarnRequest {
    pb::EarnRequest {
        request_id: id.into(),
        account: account(member),
        points,
        reason: "purchase".into(),
        ..Default::default()
    }
}

pub fn spend(id: &str, member: &str, points: i64) -> pb::SpendRequest {
    pb::SpendRequest { request_id: id.into(), account: account(member), points, ..Default::default() }
}

pub fn reason_of(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

pub fn bad_field_of(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_bad_request().and_then(|b| b.field_violations.first().map(|v| v.field.clone())).unwrap_or_default()
}

pub fn refund(id: &str, member: &str, spend_id: &str, points: i64) -> pb::RefundRequest {
    pb::RefundRequest {
        request_id: id.into(),
        account: account(member),
        spend_request_id: spend_id.into(),
        points,
        ..Default::default()
    }
}

pub fn reverse(id: &str, member: &str, earn_id: &str, points: i64) -> pb::ReverseEarnRequest {
    pb::ReverseEarnRequest {
        request_id: id.into(),
        account: account(member),
        earn_request_id: earn_id.into(),
        points,
        ..Default::default()
    }
}

pub fn adjust(id: &str, member: &str, points: i64, operator: &str, reason: &str) -> pb::AdjustRequest {
    pb::AdjustRequest {
        request_id: id.into(),
        account: account(member),
        points,
        operator: operator.into(),
        reason: reason.into(),
        ..Default::default()
    }
}

/// `n` earns of `points` each into `member`'s account, a thousand to a
/// `SubmitBatch` call, with ids `{prefix}{i}` and the expiry given; panics
/// on any refusal.
pub async fn earn_lots(
    c: &mut PointsLedgerClient<Channel>,
    member: &str,
    prefix: &str,
    n: usize,
    points: i64,
    expires_at: Option<pbjson_types::Timestamp>,
) {
    use pb::batch_command::Command as C;
    use pb::batch_result::Result as R;
    for start in (0..n).step_by(1000) {
        let commands = (start..n.min(start + 1000))
            .map(|i| pb::BatchCommand {
                command: Some(C::Earn(pb::EarnRequest { expires_at, ..earn(&format!("{prefix}{i}"), member, points) })),
            })
            .collect();
        let results = c.submit_batch(pb::SubmitBatchRequest { commands }).await.unwrap().into_inner().results;
        for r in results {
            assert!(matches!(r.result, Some(R::Reply(_))), "{r:?}");
        }
    }
}

/// An earning rule of fixed points for `action`.
pub fn rule(id: &str, action: &str, points: i64) -> pb::EarningRule {
    pb::EarningRule { rule_id: id.into(), action: action.into(), points, ..Default::default() }
}

/// An activity of `action` with no facts.
pub fn activity(id: &str, member: &str, action: &str) -> pb::RecordActivityRequest {
    pb::RecordActivityRequest {
        request_id: id.into(),
        account: account(member),
        action: action.into(),
        ..Default::default()
    }
}

/// A personal member's payment of `yuan` with these product tags.
pub fn payment(id: &str, member: &str, yuan: i64, tags: &[&str]) -> pb::RecordActivityRequest {
    pb::RecordActivityRequest {
        amount_minor: yuan * 100,
        member_type: "personal".into(),
        product_tags: tags.iter().map(|t| t.to_string()).collect(),
        order_ref: format!("order-{id}"),
        ..activity(id, member, "payment")
    }
}

/// A ConfigureProgramme with this request id that must be refused: its status.
pub async fn configure_refused(h: &Harness, id: &str, p: pb::Programme) -> tonic::Status {
    h.admin()
        .await
        .configure_programme(pb::ConfigureProgrammeRequest {
            request_id: id.into(),
            programme: Some(p),
            operator: "ops".into(),
        })
        .await
        .expect_err("a programme the service refuses")
}
