//! The delivery worker: POSTs each programme's feed items to its webhooks,
//! for the partitions this instance writes (in a cluster, each item is
//! delivered by its partition's owner), in log order per partition, at
//! least once.
//!
//! Per webhook and partition, a lane reads the feed from its stored cursor
//! (the books database's `Cf::Outbox`, `webhook/...` rows: delivery state,
//! not derived state) and sends one item at a time; a failed attempt is
//! tried again after [`super::backoff`], and nothing after it is sent
//! before it, so a receiver down for an hour gets everything, in order,
//! once it is back. The cursor moves (durably) after each delivered item;
//! a stop or a crash re-sends at most the items of the record it stood on,
//! with the same delivery ids. An instance that takes a partition over
//! starts from its own stored cursor for it (or from the partition's
//! start, sending only events decided since the webhook was configured).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{backoff, Poster};
use crate::domain::{Millis, ProgrammeKey};
use crate::feed::{self, Filter, Lane, Source};
use crate::programmes::{SharedRegistry, Webhook};
use crate::proto as pb;
use crate::store::{Batch, Cf, Db};
use crate::writer::Writers;

/// How often the worker looks for work when there is none.
const WORKER_IDLE_MS: u64 = 200;
/// Items one lane sends at most before the others get their turn.
const LANE_ITEMS_PER_ROUND_MAX: usize = 64;

/// A lane: one webhook, one partition.
pub type LaneKey = (ProgrammeKey, String, u32);

/// What `ListWebhookDeliveries` shows of a lane.
#[derive(Clone, Debug, Default)]
pub struct LaneState {
    /// The item waiting (its delivery id and position), if any.
    pub next: Option<(String, crate::log::record::Position)>,
    /// Failed attempts of that item so far.
    pub attempts: u32,
    pub last_error: String,
    pub next_attempt_at: Option<Millis>,
    /// Items delivered since this instance took the lane.
    pub delivered: u64,
    pub last_delivered_at: Option<Millis>,
    /// The partition's next offset to read, and the views' end.
    pub read_to: u64,
    pub end: u64,
}

/// The lanes this instance delivers, for `ListWebhookDeliveries`.
pub type Deliveries = Arc<Mutex<BTreeMap<LaneKey, LaneState>>>;

pub struct WorkerParts {
    pub source: Source,
    pub registry: SharedRegistry,
    pub writers: Arc<Writers>,
    pub books: Arc<Db>,
    pub deliveries: Deliveries,
    /// Where deliveries are counted.
    pub metrics: crate::metrics::Metrics,
}

/// A lane as the worker runs it.
struct Running {
    /// None only while a read has it.
    lane: Option<Lane>,
    /// Items read and not delivered yet, with the offset after their record.
    queue: VecDeque<(pb::FeedItem, u64)>,
    /// When the failed item is tried again (real time: retries wait on
    /// the wall, whatever clock the ledger decides with).
    retry_at: Option<std::time::Instant>,
}

/// The stored cursor of a lane.
fn cursor_key(k: &LaneKey) -> Vec<u8> {
    crate::store::books::webhook_cursor_key(&k.0, &k.1, k.2)
}

fn filter_of(w: &Webhook) -> Filter {
    let c = &w.config;
    let (tenant_id, programme_id) = (c.programme.tenant_id.clone(), c.programme.programme_id.clone());
    Filter { tenant_id, programme_id, types: c.event_types.iter().cloned().collect() }
}

/// Runs until `stop` is set.
pub async fn run(parts: WorkerParts, stop: Arc<std::sync::atomic::AtomicBool>) {
    let poster = match Poster::new() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client; nothing is delivered");
            return;
        }
    };
    let mut lanes: BTreeMap<LaneKey, Running> = BTreeMap::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let moved = round(&parts, &poster, &mut lanes).await;
        if moved == 0 {
            tokio::time::sleep(Duration::from_millis(WORKER_IDLE_MS)).await;
        }
    }
}

/// One pass over every lane; returns the attempts made and the lanes that
/// read records (0: nothing to do).
async fn round(parts: &WorkerParts, poster: &Poster, lanes: &mut BTreeMap<LaneKey, Running>) -> usize {
    let webhooks: Vec<Webhook> =
        parts.registry.read().expect("registry lock").webhooks().into_iter().filter(|w| !w.config.disabled).collect();
    let partitions = parts.source.events.partitions();
    let mut wanted = Vec::new();
    for w in &webhooks {
        // The control stream's lane (programme alerts) goes with partition 0.
        let owned = |p: &u32| parts.writers.owns(if *p == partitions { 0 } else { *p });
        for p in (0..parts.source.lanes()).filter(owned) {
            wanted.push(((w.config.programme.clone(), w.config.webhook_id.clone(), p), w));
        }
    }
    lanes.retain(|k, _| wanted.iter().any(|(w, _)| w == k));
    parts.deliveries.lock().expect("deliveries lock").retain(|k, _| wanted.iter().any(|(w, _)| w == k));
    let mut attempts = 0;
    for (key, w) in wanted {
        if !lanes.contains_key(&key) {
            match open(parts, &key) {
                Ok(r) => lanes.insert(key.clone(), r),
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %key.1, "webhooks: cannot open a lane");
                    continue;
                }
            };
        }
        let running = lanes.get_mut(&key).expect("opened");
        attempts += lane_step(parts, poster, &key, w, running).await;
        if running.lane.is_none() {
            // Its read failed without giving the lane back: open it again.
            lanes.remove(&key);
        }
    }
    attempts
}

/// A lane from its stored cursor.
fn open(parts: &WorkerParts, key: &LaneKey) -> Result<Running, String> {
    let stored = parts.books.get(Cf::Outbox, &cursor_key(key)).map_err(|e| e.to_string())?;
    // A cursor that does not read starts the lane at the beginning
    // (deliveries are at least once; receivers drop an id seen before).
    let next = stored.and_then(|v| crate::store::books::webhook_cursor(&v).ok()).unwrap_or(0);
    let lane = Lane::at(&parts.source, key.2, next)?;
    parts.deliveries.lock().expect("deliveries lock").entry(key.clone()).or_default().read_to = next;
    Ok(Running { lane: Some(lane), queue: VecDeque::new(), retry_at: None })
}

/// Reads what is due and sends it, one item at a time, until one fails or
/// the lane's share of the round is sent; returns the attempts made (plus
/// one when it read records, so a lane whose filter skips much moves on
/// without waiting).
async fn lane_step(parts: &WorkerParts, poster: &Poster, key: &LaneKey, w: &Webhook, r: &mut Running) -> usize {
    if r.retry_at.is_some_and(|at| at > std::time::Instant::now()) {
        return 0;
    }
    let mut progressed = 0;
    let end = parts.source.end_of(key.2);
    let behind = r.lane.as_ref().is_some_and(|l| l.next < end);
    if r.queue.is_empty() && behind {
        let Some(mut lane) = r.lane.take() else { return 0 };
        let before = lane.next;
        let (source, filter) = (parts.source.clone(), filter_of(w));
        let read = tokio::task::spawn_blocking(move || {
            let items = feed::read(&source, &filter, &mut lane, end);
            (lane, items)
        })
        .await;
        let Ok((lane, items)) = read else {
            tracing::warn!(webhook = %key.1, "webhooks: a read of the feed failed; the lane is opened again");
            return 0;
        };
        let read_to = lane.next;
        progressed = usize::from(read_to > before);
        r.lane = Some(lane);
        match items {
            Ok(items) => r.queue.extend(items.into_iter().filter(|(i, _)| millis(i) >= w.since)),
            Err(e) => tracing::warn!(error = %e, webhook = %key.1, "webhooks: cannot read the feed"),
        }
        if r.queue.is_empty() && read_to > before {
            // Nothing to send up to here: the cursor moves past what was read.
            store_cursor(parts, key, read_to);
        }
    }
    let read_to = r.lane.as_ref().map_or(0, |l| l.next);
    let mut attempts = 0;
    while let Some((item, after)) = r.queue.front().filter(|_| attempts < LANE_ITEMS_PER_ROUND_MAX) {
        let delivery_id = format!("{}:{}", key.1, item.id);
        let sent = poster.post(&w.config.url, w.config.secret.as_bytes(), &delivery_id, item.json.as_bytes()).await;
        attempts += 1;
        let mut lanes = parts.deliveries.lock().expect("deliveries lock");
        let state = lanes.entry(key.clone()).or_default();
        state.end = end;
        let outcome = if sent.is_ok() { "delivered" } else { "failed" };
        parts.metrics.counter(crate::metrics::WEBHOOK_DELIVERIES, &[("outcome", outcome.to_string())]).increment(1);
        match sent {
            Ok(()) => {
                let after = *after;
                r.queue.pop_front();
                // The cursor stands on the record of the next item (or past
                // the last read): a restart sends that record's items again.
                let next = r.queue.front().map_or(read_to, |(i, _)| i.position.map_or(after, |p| p.offset));
                store_cursor(parts, key, next);
                let delivered = state.delivered + 1;
                let last_delivered_at = Some(wall_now());
                *state = LaneState { delivered, last_delivered_at, end, read_to, ..LaneState::default() };
                r.retry_at = None;
            }
            Err(e) => {
                let at =
                    item.position.map(|p| crate::log::record::Position { partition: p.partition, offset: p.offset });
                state.next = at.map(|p| (delivery_id, p));
                state.last_error = e.to_string();
                state.attempts += 1;
                let wait = backoff(state.attempts - 1);
                state.next_attempt_at = Some(wall_now().saturating_add(wait.as_millis() as Millis));
                r.retry_at = Some(std::time::Instant::now() + wait);
                break;
            }
        }
    }
    attempts + progressed
}

fn wall_now() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// When an item's record was decided.
fn millis(i: &pb::FeedItem) -> Millis {
    i.at.as_ref().map_or(0, |t| t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos) / 1_000_000))
}

fn store_cursor(parts: &WorkerParts, key: &LaneKey, next: u64) {
    let mut batch = Batch::default();
    batch.put(Cf::Outbox, &cursor_key(key), &crate::store::books::webhook_cursor_row(next));
    if let Err(e) = parts.books.write(batch) {
        tracing::warn!(error = %e, webhook = %key.1, "webhooks: cannot store a cursor");
    }
}
