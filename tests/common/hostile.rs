//! Hostile and damaged records for tests: bytes that do not decode, records
//! forged for another partition or naming what an account does not have,
//! written into a stopped service's embedded log or produced into a Kafka
//! topic by a producer of the test's own; and what the service says of them.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use points_ledger::domain::{AccountKey, Event, LotAmount};
use points_ledger::log::arbiter::{Arbiter, Home};
use points_ledger::log::codec;
use points_ledger::log::embedded::EmbeddedLog;
use points_ledger::log::record::{partition_for, AccountRecord};
use points_ledger::log::{EventLog, LogRecord};
use points_ledger::proto as pb;

use super::{Harness, T0};

/// Partitions of the harness's account log.
pub const PARTITIONS: u32 = 3;
/// Times a test looks for the books to have folded what it wrote, at most
/// (the books trail the views by design).
const BOOKS_POLLS_MAX: usize = 200;
const BOOKS_POLL_MS: u64 = 100;
/// A start that does not finish by then fails the test instead of hanging it.
pub const START_DEADLINE_SECS: u64 = 120;

/// 64 bytes that decode as no record of either stream (fixed, so a failure
/// repeats; the test asserts they do not decode).
pub fn garbage() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    assert!(codec::decode_partition_record(&bytes).is_err(), "the garbage decodes as an account record");
    assert!(codec::decode_control_record(&bytes).is_err(), "the garbage decodes as a control record");
    bytes
}

pub fn key(member: &str) -> AccountKey {
    AccountKey::new("shop", "points", member)
}

pub fn partition_of(member: &str) -> u32 {
    partition_for(&key(member), PARTITIONS)
}

/// A member other than `than` whose account is in `partition` (`same`) or not.
pub fn member_where(than: &str, same: bool) -> String {
    let p = partition_of(than);
    (0..).map(|i| format!("m{i}")).find(|m| m != than && (partition_of(m) == p) == same).expect("a member")
}

/// Appends `payload` to `partition` of a stopped service's embedded
/// account log in `data_dir`; returns its offset.
pub fn append_to_events(data_dir: &Path, partition: u32, payload: Vec<u8>) -> u64 {
    let log = EmbeddedLog::open(&data_dir.join("log").join("events"), PARTITIONS).unwrap();
    log.append(partition, &[LogRecord::new(b"hostile".to_vec(), payload)]).unwrap()[0]
}

/// Appends `payload` to a stopped service's control stream; returns its offset.
pub fn append_to_control(data_dir: &Path, payload: Vec<u8>) -> u64 {
    let log = EmbeddedLog::open(&data_dir.join("log").join("control"), 1).unwrap();
    log.append(0, &[LogRecord::new(b"hostile".to_vec(), payload)]).unwrap()[0]
}

/// The epoch records of `partition` count with now (the latest counted
/// claim's), as every reader of the log sees it.
pub fn epoch_of(log: &dyn EventLog, partition: u32) -> u64 {
    let home = Home { partition, partitions: log.partitions() };
    let end = log.end_offset(partition).unwrap();
    let mut reader = log.reader(partition, 0).unwrap();
    let mut arbiter = Arbiter::default();
    loop {
        let entries = points_ledger::log::read_towards(reader.as_mut(), end, 1024).unwrap();
        if entries.is_empty() {
            return arbiter.epoch;
        }
        for e in entries {
            arbiter.admit_bytes(&e.payload, home);
        }
    }
}

/// A command's record for `member`'s account as a writer of `epoch` would
/// append it, holding `events`.
pub fn forged(member: &str, epoch: u64, events: Vec<Event>) -> Vec<u8> {
    codec::encode_account_record(&AccountRecord {
        epoch,
        request_id: format!("forged-{member}"),
        account: key(member),
        programme_version: 1,
        at: T0,
        fingerprint: 0,
        system: false,
        events,
        context: Default::default(),
        cap_mode: Default::default(),
    })
}

/// A spend of `points` from a lot no account has.
pub fn spend_from_nowhere(points: i64) -> Vec<Event> {
    vec![Event::PointsSpent {
        spend_id: "forged-spend".into(),
        order_ref: None,
        points,
        lots: vec![LotAmount::new("no-such-lot", points)],
        order_cash_minor: 0,
    }]
}

/// An earn of `points` that would apply cleanly to any account without the lot.
pub fn earned(points: i64) -> Vec<Event> {
    vec![Event::PointsEarned {
        lot_id: "forged-earn".into(),
        reason: "purchase".into(),
        order_ref: None,
        requested: points,
        granted: points,
        forfeited: 0,
        debt_repaid: 0,
        expires_at: None,
        growth: 0,
        day: 0,
        pending: false,
    }]
}

pub async fn available(h: &Harness, member: &str) -> i64 {
    h.ledger()
        .await
        .get_account(pb::GetAccountRequest { account: super::account(member), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .available
}

/// The `log_record_quarantined` alert naming `partition` and `offset`, once
/// the books have folded that far (None if they never list it).
pub async fn quarantine_alert(h: &Harness, partition: u32, offset: u64) -> Option<pb::Alert> {
    alert_where(h, |a| {
        a.rule == "log_record_quarantined" && a.events.iter().any(|e| e.partition == partition && e.offset == offset)
    })
    .await
}

/// The first alert of the programme within a day of T0 that `matches`, once
/// the books have folded that far (None if they never list one).
pub async fn alert_where(h: &Harness, matches: impl Fn(&pb::Alert) -> bool) -> Option<pb::Alert> {
    let ts = |ms: i64| Some(pbjson_types::Timestamp { seconds: ms / 1000, nanos: 0 });
    let day_ms = 86_400_000;
    for _ in 0..BOOKS_POLLS_MAX {
        let alerts = h
            .admin()
            .await
            .list_alerts(pb::ListAlertsRequest {
                tenant_id: "shop".into(),
                programme_id: "points".into(),
                from: ts(T0 - day_ms),
                to: ts(T0 + day_ms),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .alerts;
        if let Some(found) = alerts.into_iter().find(&matches) {
            return Some(found);
        }
        tokio::time::sleep(Duration::from_millis(BOOKS_POLL_MS)).await;
    }
    None
}

/// What gRPC health says of `service` ("" for the server as a whole).
pub async fn health(h: &Harness, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(h.url()).unwrap().connect().await.unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
        .await
        .unwrap()
        .into_inner()
        .status
}

pub const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// Runs the real binary with `args`: whether it succeeded, and what it said.
pub fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger")).args(args).env("RUST_LOG", "warn").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
