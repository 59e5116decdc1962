//! A log written by an earlier build (tests/fixtures/log-2026-12-01, before
//! the API, log and state schemas were split) still opens: every record
//! decodes without validation and encodes back to the very same bytes, a
//! service started on it shows the balances that build showed, and its
//! views rebuild byte for byte; a writer folding it behind from offset zero
//! writes what its catch-up through the live path writes.

use crate::common;

use std::path::Path;

use common::*;
use points_ledger::log::codec;
use points_ledger::log::embedded::EmbeddedLog;
use points_ledger::log::record::PartitionRecord;
use points_ledger::log::{read_towards, EventLog};
use points_ledger::proto as pb;

const FIXTURE: &str = "tests/fixtures/log-2026-12-01";
const DAY: i64 = 86_400_000;

/// A copy of the fixture's data directory (opening a log for writing may
/// touch it; the fixture itself stays as it was).
fn copy_fixture() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE).join("log"), &dir.path().join("log"));
    dir
}

fn payloads(log: &dyn EventLog, partition: u32) -> Vec<Vec<u8>> {
    let end = log.end_offset(partition).unwrap();
    let mut reader = log.reader(partition, 0).unwrap();
    let mut out = Vec::new();
    loop {
        let batch = read_towards(reader.as_mut(), end, 1000).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.into_iter().map(|e| e.payload));
    }
}

fn expected() -> Vec<(String, [i64; 4], String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE).join("expected.txt"));
    text.unwrap()
        .lines()
        .filter(|l| !l.starts_with("records"))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let n = |i: usize| f[i].parse::<i64>().unwrap();
            (f[0].to_string(), [n(1), n(2), n(3), n(4)], f[5].to_string())
        })
        .collect()
}

#[test]
fn every_record_of_an_old_log_decodes_and_encodes_to_the_same_bytes() {
    let dir = copy_fixture();
    let events = EmbeddedLog::open_read_only(&dir.path().join("log/events")).unwrap();
    let (mut accounts, mut claims) = (0, 0);
    for p in 0..events.partitions() {
        for payload in payloads(&events, p) {
            let again = match codec::decode_partition_record(&payload).unwrap() {
                PartitionRecord::Account(r) => {
                    accounts += 1;
                    codec::encode_account_record(&r)
                }
                PartitionRecord::Claim(c) => {
                    claims += 1;
                    codec::encode_claim(&c)
                }
            };
            assert_eq!(again, payload, "partition {p}");
        }
    }
    assert_eq!((accounts, claims), (33, 1));
    let control = EmbeddedLog::open_read_only(&dir.path().join("log/control")).unwrap();
    let records = payloads(&control, 0);
    assert_eq!(records.len(), 3);
    for payload in records {
        assert_eq!(codec::encode_control_record(&codec::decode_control_record(&payload).unwrap()), payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_on_an_old_log_shows_its_balances_and_rebuilds_byte_for_byte() {
    if broker::kafka_suite() {
        return; // the fixture is an embedded log
    }
    // The fixture's last records were decided 43 days after T0; nothing
    // falls due a day later.
    let h =
        Harness::start_in(copy_fixture(), points_ledger::clock::ManualClock::new(T0 + 44 * DAY), |c| c.partitions = 2)
            .await;
    let mut c = h.ledger().await;
    for (member, [available, reserved, debt, growth], level) in expected() {
        let a = c
            .get_account(pb::GetAccountRequest { account: account(&member), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!([a.available, a.reserved, a.debt, a.growth], [available, reserved, debt, growth], "{member}");
        assert_eq!(a.level, level, "{member}");
    }
    // The statement shows the log's events as the API has them now.
    let entries = c
        .list_entries(pb::ListEntriesRequest { account: account("bob"), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let earned = entries.iter().find_map(|e| match e.event.as_ref().and_then(|x| x.event.as_ref()) {
        Some(pb::ledger_event::Event::PointsEarned(x)) => Some(x.clone()),
        _ => None,
    });
    assert_eq!(earned.map(|e| e.date), Some("2026-03-10".to_string()));
    let (dir, _) = h.stop().await;
    let events = EmbeddedLog::open_read_only(&dir.path().join("log/events")).unwrap();
    let views = points_ledger::tools::audit::open_views_read_only(dir.path()).unwrap();
    let (_, difference) = points_ledger::tools::audit::verify(&events, &views).unwrap();
    assert!(difference.is_none(), "{difference:?}");
}

/// The fold behind (a writer without state, as a rebuild folds) and the
/// live catch-up write the same partitions' state, byte for byte: the views
/// and the writers' own rows (idempotency records, due index, issuance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_folding_an_old_log_behind_writes_what_its_live_catch_up_writes() {
    if broker::kafka_suite() {
        return; // the fixture is an embedded log
    }
    let mut digests = Vec::new();
    for min in [u64::MAX, 0] {
        let clock = points_ledger::clock::ManualClock::new(T0 + 44 * DAY);
        let h = Harness::start_in(copy_fixture(), clock, |c| {
            c.partitions = 2;
            c.writer.bulk_catch_up_records_min = min;
        })
        .await;
        let (dir, _) = h.stop().await;
        let views = points_ledger::tools::audit::open_views_read_only(dir.path()).unwrap();
        digests.push(views.digest().unwrap());
    }
    assert!(digests[0].iter().any(|(cf, _, rows)| *cf == "requests" && *rows > 0), "{digests:?}");
    assert_eq!(digests[0], digests[1]);
}
