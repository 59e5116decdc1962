//! A log that fails its appends: commands get UNAVAILABLE, nothing is
//! written or acknowledged, and the service carries on once the log is back.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use points_ledger::clock::ManualClock;
use points_ledger::log::{EventLog, LogError, LogReader, LogRecord};
use points_ledger::proto as pb;
use tonic::Code;

/// The embedded log, with appends that fail while `down` is set.
struct FlakyLog {
    inner: Arc<dyn EventLog>,
    down: Arc<AtomicBool>,
}

impl EventLog for FlakyLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn append(&self, partition: u32, records: &[LogRecord]) -> Result<Vec<u64>, LogError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(LogError::Unavailable("injected: disk gone".into()));
        }
        self.inner.append(partition, records)
    }
    fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        self.inner.end_offset(partition)
    }
    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn LogReader>, LogError> {
        self.inner.reader(partition, from)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_log_answers_unavailable_writes_nothing_and_recovers() {
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    let h = Harness::start_wrapped(
        tempfile::tempdir().unwrap(),
        ManualClock::new(T0),
        |_| {},
        move |inner| Arc::new(FlakyLog { inner, down: d }) as Arc<dyn EventLog>,
    )
    .await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    c.earn(earn("e1", "ivy", 100)).await.unwrap();

    down.store(true, Ordering::SeqCst);
    let before = h.records();
    let err = c.spend(spend("s1", "ivy", 30)).await.unwrap_err();
    assert_eq!((err.code(), reason_of(&err).as_str()), (Code::Unavailable, "UNAVAILABLE"));
    assert!(err.message().contains("retry"), "{}", err.message());
    assert_eq!(h.records(), before);
    // The failed spend left no trace in the writer's state either.
    let r = c.earn(earn("e2", "ivy", 1)).await.unwrap_err();
    assert_eq!(r.code(), Code::Unavailable);

    down.store(false, Ordering::SeqCst);
    let r = c.spend(spend("s1", "ivy", 30)).await.unwrap().into_inner();
    assert!(!r.replayed, "the failed attempt was never acknowledged");
    assert_eq!(r.balance.unwrap().available, 70);
    let again = c.spend(spend("s1", "ivy", 30)).await.unwrap().into_inner();
    assert!(again.replayed);
    let a = c
        .get_account(pb::GetAccountRequest {
            account: account("ivy"),
            min_position: r.position,
            as_of: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.available, 70);
    h.stop().await;
}
