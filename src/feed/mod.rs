//! The feed (`points.v1.Feed/Subscribe`, and the webhooks' source): the
//! account events of one programme as the views commit them, from any
//! position, on the embedded log and on Kafka alike.
//!
//! A subscription reads the log itself, one reader per partition, and
//! never past where the views stand, so it sends only what every reader
//! counts: it starts with the arbitration the views noted just before its
//! position (`projection::arbiter_at`), admits each record as the writers
//! did, and skips the records the views quarantined. The writers never wait
//! for it; its items go through a bounded channel, and a subscriber that
//! leaves the channel full for the stall bound is cut off
//! ([`SUBSCRIBER_TOO_SLOW`]) and resumes from its last position.
//!
//! Programme-wide alerts are events of the control stream
//! (`ProgrammeAlertRaised`): the feed reads it as one more partition,
//! numbered after the account partitions (partition N of N), and sends the
//! ones that counted (as far as the registry has folded it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::api::convert::{account_key_to_pb, position_to_pb, timestamp};
use crate::domain::{AccountKey, Event, Millis};
use crate::log::arbiter::{Admitted, Arbiter, Home};
use crate::log::record::{AccountRecord, Position};
use crate::log::{read_towards, EventLog, LogReader};
use crate::proto as pb;
use crate::store::Db;

/// The reason a subscriber is cut off.
pub const SUBSCRIBER_TOO_SLOW: &str = "SUBSCRIBER_TOO_SLOW";
/// Items a subscription holds for its subscriber before it waits.
pub const FEED_BUFFER_ITEMS: usize = 1024;
/// How long a subscription waits for a full buffer to drain before it
/// cuts the subscriber off (`serve --feed-stall-ms`).
pub const FEED_STALL_DEFAULT: Duration = Duration::from_secs(30);
/// Records read from one partition at a time.
const FEED_READ_RECORDS_MAX: usize = 512;
/// How long an idle subscription sleeps before it looks for more.
const FEED_IDLE_MS: u64 = 50;

/// Which items a subscription sends.
#[derive(Clone, Debug)]
pub struct Filter {
    pub tenant_id: String,
    pub programme_id: String,
    /// Event types (empty: all).
    pub types: BTreeSet<String>,
}

impl Filter {
    fn takes(&self, account: &AccountKey) -> bool {
        account.tenant_id == self.tenant_id && account.programme_id == self.programme_id
    }
}

/// What a subscription reads.
#[derive(Clone)]
pub struct Source {
    pub events: Arc<dyn EventLog>,
    pub views: Arc<Db>,
    /// The views' next offset per partition.
    pub positions: watch::Receiver<Vec<u64>>,
    /// Set when the service stops.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The control stream, and the registry that folds it.
    pub control: Arc<dyn EventLog>,
    pub registry: crate::programmes::SharedRegistry,
}

impl Source {
    /// The partitions a subscription reads: the account partitions, then
    /// the control stream.
    pub fn lanes(&self) -> u32 {
        self.events.partitions() + 1
    }

    /// Where lane `partition` may be read up to: the views' position, or,
    /// for the control stream, what the registry has folded.
    pub fn end_of(&self, partition: u32) -> u64 {
        if partition == self.events.partitions() {
            return self.registry.read().expect("registry lock").applied();
        }
        self.positions.borrow().get(partition as usize).copied().unwrap_or(0)
    }
}

/// Why a subscription ended early.
#[derive(Debug)]
pub enum Ended {
    /// The subscriber went away.
    Gone,
    /// The subscriber left its buffer full for the stall bound.
    TooSlow,
    /// The log or the views could not be read.
    Failed(String),
    /// The service is stopping.
    Stopping,
}

/// One partition's place in the log.
pub struct Lane {
    home: Home,
    /// The next offset to read.
    pub next: u64,
    arbiter: Arbiter,
    reader: Option<Box<dyn LogReader>>,
}

impl Lane {
    /// Partition `partition` from offset `next`, judged as the views did.
    pub fn at(source: &Source, partition: u32, next: u64) -> Result<Lane, String> {
        let arbiter = if partition == source.events.partitions() {
            Arbiter::default()
        } else {
            crate::projection::arbiter_at(&source.views, partition, next).map_err(|e| e.to_string())?
        };
        let home = Home { partition, partitions: source.events.partitions() };
        Ok(Lane { home, next, arbiter, reader: None })
    }

    pub fn partition(&self) -> u32 {
        self.home.partition
    }
}

/// The items of the lane's next records (at most [`FEED_READ_RECORDS_MAX`]
/// of them, never at or past `end`), with the offset after each record;
/// moves the lane past them.
pub fn read(source: &Source, filter: &Filter, lane: &mut Lane, end: u64) -> Result<Vec<(pb::FeedItem, u64)>, String> {
    if lane.next >= end {
        return Ok(Vec::new());
    }
    let p = lane.home.partition;
    let control = p == source.events.partitions();
    let mut reader = match lane.reader.take() {
        Some(r) => r,
        None if control => source.control.reader(0, lane.next).map_err(|e| e.to_string())?,
        None => source.events.reader(p, lane.next).map_err(|e| e.to_string())?,
    };
    if control {
        let entries = read_towards(reader.as_mut(), end, FEED_READ_RECORDS_MAX).map_err(|e| e.to_string())?;
        let items = control_items(source, filter, p, &entries);
        lane.next = entries.last().map_or(lane.next, |e| e.offset + 1);
        lane.reader = Some(reader);
        return Ok(items);
    }
    let entries = read_towards(reader.as_mut(), end, FEED_READ_RECORDS_MAX).map_err(|e| e.to_string())?;
    let Some(last) = entries.last().map(|e| e.offset) else { return Ok(Vec::new()) };
    let skipped = crate::projection::quarantined_in(&source.views.snapshot(), p, lane.next, last + 1)
        .map_err(|e| e.to_string())?;
    let mut items = Vec::new();
    for e in &entries {
        let Admitted::Record(record) = lane.arbiter.admit_bytes(&e.payload, lane.home) else { continue };
        if !skipped.contains_key(&e.offset) {
            let at = Position { partition: p, offset: e.offset };
            items.extend(items_of(&record, at, filter).into_iter().map(|i| (i, e.offset + 1)));
        }
    }
    lane.next = last + 1;
    lane.reader = Some(reader);
    Ok(items)
}

/// The names of the event types there are.
pub fn event_types() -> BTreeSet<&'static str> {
    [
        "PointsEarned",
        "PointsSpent",
        "PointsReserved",
        "ReservationCaptured",
        "ReservationReleased",
        "SpendRefunded",
        "EarnReversed",
        "PointsRecovered",
        "PointsExpired",
        "PointsAdjusted",
        "AccountFrozen",
        "AccountUnfrozen",
        "GrowthExpired",
        "LevelChanged",
        "SettlementSetAside",
        "ActivityRecorded",
        "GrowthEvaluated",
        "PenaltyApplied",
        "GrowthAdjusted",
        "LevelHeld",
        "ExpiryReminderDue",
        "AlertRaised",
        "EarningsHeld",
        "EarningsUnheld",
        "PendingPointsReleased",
        "PendingPointsForfeited",
        "AdjustmentRequested",
        "AdjustmentApproved",
        "AdjustmentRejected",
    ]
    .into_iter()
    .collect()
}

/// The CloudEvents-style JSON body of an event (what a webhook POSTs).
pub fn item_json(id: &str, account: &AccountKey, at: Millis, event: Event) -> String {
    let name = event.name();
    let time = chrono::DateTime::from_timestamp_millis(at).map(|t| t.to_rfc3339()).unwrap_or_default();
    serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("points-ledger/{}/{}", account.tenant_id, account.programme_id),
        "type": format!("points.v1.{name}"),
        "time": time,
        "subject": account.to_string(),
        "datacontenttype": "application/json",
        "data": crate::tools::export::event_json(event),
    })
    .to_string()
}

/// The items of a counted record the filter takes.
pub fn items_of(record: &AccountRecord, at: Position, filter: &Filter) -> Vec<pb::FeedItem> {
    if !filter.takes(&record.account) {
        return Vec::new();
    }
    let account = Some(account_key_to_pb(&record.account));
    record
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| filter.types.is_empty() || filter.types.contains(e.name()))
        .map(|(i, e)| {
            let id = format!("{}-{}-{i}", at.partition, at.offset);
            pb::FeedItem {
                position: Some(position_to_pb(at)),
                r#type: e.name().to_string(),
                json: item_json(&id, &record.account, record.at, e.clone()),
                id,
                at: Some(timestamp(record.at)),
                account: account.clone(),
            }
        })
        .collect()
}

/// The programme alerts among control-stream entries that counted, as
/// items of lane `lane` (the control stream's).
fn control_items(
    source: &Source,
    filter: &Filter,
    lane: u32,
    entries: &[crate::log::LogEntry],
) -> Vec<(pb::FeedItem, u64)> {
    use crate::log::record::ControlEvent;
    let types_ok = filter.types.is_empty() || filter.types.contains("AlertRaised");
    let mut items = Vec::new();
    for e in entries {
        let Ok(r) = crate::log::codec::decode_control_record(&e.payload) else { continue };
        let ControlEvent::AlertRaised(a) = &r.event else { continue };
        let account = AccountKey::new(&a.programme.tenant_id, &a.programme.programme_id, "");
        let counted =
            source.registry.read().expect("registry lock").admin_request_at(&a.programme.tenant_id, &r.request_id);
        if !types_ok || !filter.takes(&account) || counted.map(|p| p.offset) != Some(e.offset) {
            continue;
        }
        let id = format!("{lane}-{}-0", e.offset);
        let event = Event::AlertRaised { alert_id: a.alert_id.clone(), rule: a.rule.clone(), detail: a.detail.clone() };
        let item = pb::FeedItem {
            position: Some(position_to_pb(Position { partition: lane, offset: e.offset })),
            r#type: "AlertRaised".into(),
            json: item_json(&id, &account, r.at, event),
            id,
            at: Some(timestamp(r.at)),
            account: Some(account_key_to_pb(&account)),
        };
        items.push((item, e.offset + 1));
    }
    items
}

/// Sends the items of every partition from `starts` (each partition's next
/// offset) on, as the views commit them, until the subscriber goes away or
/// is cut off. Blocking: run it on a blocking thread.
pub fn run(
    source: &Source,
    filter: &Filter,
    starts: &[u64],
    tx: &mpsc::Sender<pb::FeedItem>,
    stall: Duration,
) -> Ended {
    let mut lanes = Vec::with_capacity(starts.len());
    for (p, &next) in (0..source.lanes()).zip(starts) {
        match Lane::at(source, p, next) {
            Ok(lane) => lanes.push(lane),
            Err(e) => return Ended::Failed(e),
        }
    }
    loop {
        let mut read = 0;
        for lane in &mut lanes {
            let end = source.end_of(lane.home.partition);
            match step(source, filter, lane, end, tx, stall) {
                Ok(n) => read += n,
                Err(ended) => return ended,
            }
        }
        if tx.is_closed() {
            return Ended::Gone;
        }
        if source.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ended::Stopping;
        }
        if read == 0 {
            std::thread::sleep(Duration::from_millis(FEED_IDLE_MS));
        }
    }
}

/// Reads one partition's next records up to `end` and sends their items;
/// returns how many records it read.
fn step(
    source: &Source,
    filter: &Filter,
    lane: &mut Lane,
    end: u64,
    tx: &mpsc::Sender<pb::FeedItem>,
    stall: Duration,
) -> Result<u64, Ended> {
    let before = lane.next;
    for (item, _) in read(source, filter, lane, end).map_err(Ended::Failed)? {
        send(tx, item, stall)?;
    }
    Ok(lane.next - before)
}

/// Puts an item in the subscriber's buffer, waiting up to `stall` for room.
fn send(tx: &mpsc::Sender<pb::FeedItem>, item: pb::FeedItem, stall: Duration) -> Result<(), Ended> {
    let started = Instant::now();
    let mut item = item;
    loop {
        match tx.try_send(item) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Ended::Gone),
            Err(mpsc::error::TrySendError::Full(back)) if started.elapsed() < stall => {
                item = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(mpsc::error::TrySendError::Full(_)) => return Err(Ended::TooSlow),
        }
    }
}
