//! A hostile or damaged log (issue 30, defect 4), on the embedded log: a
//! record that does not decode, one that names another partition's account,
//! one that would break its account, and garbage in the control stream.
//! Every reader (the writers, the views, the books, a rebuild, the tools)
//! skips such a record alike, names it and raises an alert, and the
//! service goes on serving. The records are written into the log while the
//! service is stopped, then it starts on them.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::hostile::*;
use common::*;
use points_ledger::log::{EventLog, LogEntry, LogError, LogReader, LogRecord};

/// A stopped service's log gets what `write` appends (given the data
/// directory); the service starts again on it. Before: ann and bob (in
/// ann's partition) and cy (in another) earned 100 each.
async fn restarted_after(write: impl FnOnce(&std::path::Path) -> u64) -> Option<(Harness, u64)> {
    if common::broker::kafka_suite() {
        eprintln!("skipping: this test writes into the embedded log (tests/hostile_kafka.rs covers Kafka)");
        return None;
    }
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    for m in ["ann".to_string(), member_where("ann", true), member_where("ann", false)] {
        c.earn(earn(&format!("before-{m}"), &m, 100)).await.unwrap();
    }
    let (dir, clock) = h.stop_for_restart().await;
    let offset = write(dir.path());
    let started = Harness::start_in(dir, clock, |_| {});
    let h = tokio::time::timeout(Duration::from_secs(START_DEADLINE_SECS), started)
        .await
        .expect("the service starts on the log (it never took commands again before)");
    Some((h, offset))
}

async fn with_garbage_in_anns_partition() -> Option<(Harness, u64)> {
    restarted_after(|dir| append_to_events(dir, partition_of("ann"), garbage())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_garbage_in_its_partition_a_member_earns_and_spends_as_before() {
    let Some((h, _)) = with_garbage_in_anns_partition().await else { return };
    let mut c = h.ledger().await;
    let r = c.earn(earn("after", "ann", 50)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 150);
    let r = c.spend(spend("spend-after", "ann", 120)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 30);
    for m in [member_where("ann", true), member_where("ann", false)] {
        let r = c.earn(earn(&format!("after-{m}"), &m, 1)).await.unwrap().into_inner();
        assert_eq!(r.balance.unwrap().available, 101, "{m} is unaffected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_log_is_named_in_an_alert_with_its_partition_and_offset() {
    let Some((h, offset)) = with_garbage_in_anns_partition().await else { return };
    // The books fold up to where the views stand: a command moves them on.
    h.ledger().await.earn(earn("after", "ann", 50)).await.unwrap();
    let alert = quarantine_alert(&h, partition_of("ann"), offset).await.expect("an alert names the record");
    assert_eq!(alert.figures.get("offset"), Some(&(offset as i64)));
    assert!(alert.subject.contains("undecodable"), "{}", alert.subject);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_recon_pass_on_a_log_with_garbage_in_it() {
    let Some((h, _)) = with_garbage_in_anns_partition().await else { return };
    h.ledger().await.earn(earn("after", "ann", 50)).await.unwrap();
    let (dir, _) = h.stop().await;
    let data = dir.path().to_str().unwrap();
    let (ok, out) = cli(&["verify", "--data-dir", data]);
    assert!(ok && out.contains("books verified"), "{out}");
    let (ok, out) = cli(&["recon", "--data-dir", data, "--date", "2026-03-10"]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_restarted_on_a_log_with_garbage_is_serving_and_takes_commands() {
    let Some((h, _)) = with_garbage_in_anns_partition().await else { return };
    h.ledger().await.earn(earn("after", "ann", 50)).await.unwrap();
    let (dir, clock) = h.stop_for_restart().await;
    let h = Harness::start_in(dir, clock, |_| {}).await;
    assert_eq!(health(&h, "").await, SERVING);
    assert_eq!(health(&h, "points.v1.PointsLedger").await, SERVING);
    let r = h.ledger().await.earn(earn("after-restart", "ann", 1)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 151);
}

/// ann's partition gets a record of ann's account, counted by the arbiter
/// (the epoch of the log's writer), spending from a lot ann does not have.
async fn with_a_spend_from_a_lot_that_does_not_exist() -> Option<(Harness, u64)> {
    restarted_after(|dir| append_to_events(dir, partition_of("ann"), forged("ann", 0, spend_from_nowhere(60)))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_naming_a_lot_that_does_not_exist_is_skipped_by_the_writer_and_the_views() {
    let Some((h, _)) = with_a_spend_from_a_lot_that_does_not_exist().await else { return };
    assert_eq!(available(&h, "ann").await, 100);
    let r = h.ledger().await.spend(spend("after", "ann", 100)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_naming_a_lot_that_does_not_exist_is_skipped_by_the_books_and_a_rebuild() {
    let Some((h, offset)) = with_a_spend_from_a_lot_that_does_not_exist().await else { return };
    h.ledger().await.earn(earn("after", "ann", 1)).await.unwrap();
    let alert = quarantine_alert(&h, partition_of("ann"), offset).await.expect("an alert names the record");
    assert!(alert.subject.contains("no lot no-such-lot"), "{}", alert.subject);
    assert_eq!(alert.accounts, vec![account("ann").unwrap()]);
    let (dir, _) = h.stop().await;
    let data = dir.path().to_str().unwrap();
    let (ok, out) = cli(&["verify", "--data-dir", data]);
    assert!(ok && out.contains("books verified"), "{out}");
    let (ok, out) = cli(&["recon", "--data-dir", data, "--date", "2026-03-10", "--format", "csv"]);
    assert!(ok, "the books balance and agree with the views: {out}");
    let (ok, out) = cli(&["explain", "--data-dir", data, "--account", "shop/points/ann"]);
    assert!(ok && !out.contains("forged-spend"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_for_another_partitions_account_is_skipped() {
    let cy = member_where("ann", false);
    let forged_earn = forged(&cy, 0, earned(1_000));
    let Some((h, offset)) = restarted_after(|dir| append_to_events(dir, partition_of("ann"), forged_earn)).await else {
        return;
    };
    assert_eq!(available(&h, &cy).await, 100, "the earn was written where cy's account is not");
    let r = h.ledger().await.earn(earn("after", &cy, 1)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 101);
    let alert = quarantine_alert(&h, partition_of("ann"), offset).await.expect("an alert names the record");
    assert!(alert.subject.contains("belongs to partition"), "{}", alert.subject);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_control_stream_does_not_stop_the_service_starting() {
    let Some((h, _)) = restarted_after(|dir| append_to_control(dir, garbage())).await else { return };
    assert_eq!(health(&h, "").await, SERVING);
    let r = h.ledger().await.earn(earn("after", "ann", 1)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 101, "the programme configured before the garbage still counts");
    let mut p = programme();
    p.validity_days = 30;
    assert_eq!(configure(&h, p).await.programme.unwrap().version, 2, "configuring goes on after it");
}

/// The embedded log, whose `stuck` partition cannot be read while `down`.
struct StuckLog {
    inner: std::sync::Arc<dyn EventLog>,
    stuck: u32,
    down: std::sync::Arc<AtomicBool>,
}

impl EventLog for StuckLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn append(&self, partition: u32, records: &[LogRecord]) -> Result<Vec<u64>, LogError> {
        self.inner.append(partition, records)
    }
    fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        self.inner.end_offset(partition)
    }
    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn LogReader>, LogError> {
        let inner = self.inner.reader(partition, from)?;
        if partition != self.stuck {
            return Ok(inner);
        }
        Ok(Box::new(StuckReader { inner, down: self.down.clone() }))
    }
}

struct StuckReader {
    inner: Box<dyn LogReader>,
    down: std::sync::Arc<AtomicBool>,
}

impl LogReader for StuckReader {
    fn next_batch(&mut self, max_records: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(LogError::Unavailable("injected: partition unreadable".into()));
        }
        self.inner.next_batch(max_records, wait)
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
}

/// Times the test looks whether health changed, at most.
const HEALTH_POLLS_MAX: usize = 200;
const HEALTH_POLL_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_not_serving_while_a_partition_cannot_catch_up_and_serving_once_it_has() {
    if common::broker::kafka_suite() {
        return;
    }
    let h = Harness::start().await;
    configure(&h, programme()).await;
    h.ledger().await.earn(earn("before", "ann", 100)).await.unwrap();
    let (dir, clock) = h.stop_for_restart().await;
    // A new start with no views: the writer must read the partition from zero.
    std::fs::remove_dir_all(dir.path().join("views")).unwrap();
    let down = std::sync::Arc::new(AtomicBool::new(true));
    let d = down.clone();
    let wrap = move |inner| std::sync::Arc::new(StuckLog { inner, stuck: partition_of("ann"), down: d }) as _;
    let h = Harness::start_serving(dir, clock, |_| {}, wrap, false).await;
    let err = h.ledger().await.earn(earn("while-stuck", "ann", 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_ne!(health(&h, "").await, SERVING, "the server as a whole");
    assert_ne!(health(&h, "points.v1.PointsLedger").await, SERVING);
    down.store(false, Ordering::SeqCst);
    let mut serving = false;
    for _ in 0..HEALTH_POLLS_MAX {
        serving = health(&h, "").await == SERVING && health(&h, "points.v1.PointsLedger").await == SERVING;
        if serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(HEALTH_POLL_MS)).await;
    }
    assert!(serving, "health says SERVING once the partition caught up");
    let r = h.ledger().await.earn(earn("after", "ann", 1)).await.unwrap().into_inner();
    assert_eq!(r.balance.unwrap().available, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_earns_that_overflow_the_days_book_are_left_out_and_the_books_go_on_unbalanced() {
    let bob = member_where("ann", true);
    let huge = 5_000_000_000_000_000_000;
    let Some((h, offset)) = restarted_after(|dir| {
        append_to_events(dir, partition_of("ann"), forged("ann", 0, earned(huge)));
        append_to_events(dir, partition_of("ann"), forged(&bob, 0, earned(huge)))
    })
    .await
    else {
        return;
    };
    let alert = quarantine_alert(&h, partition_of("ann"), offset).await.expect("the books went past it");
    assert!(alert.subject.contains("overflow"), "{}", alert.subject);
    let mut books = points_ledger::proto::reconciliation_client::ReconciliationClient::connect(h.url()).await.unwrap();
    let book = books
        .get_daily_book(points_ledger::proto::GetDailyBookRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            date: "2026-03-10".into(),
        })
        .await
        .expect("the day's book is served")
        .into_inner();
    assert!(!book.balanced, "the record left out leaves the books apart from the views: {book:?}");
    h.ledger().await.earn(earn("after", "ann", 1)).await.expect("the service goes on");
}
