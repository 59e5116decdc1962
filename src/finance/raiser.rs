//! Raises members' alerts in their own partitions, so that an alert is an
//! event of the log (`AlertRaised`, in statements, the feed and webhooks)
//! and an alert of a holding rule (`RiskRules::hold_earnings_on`) holds the
//! member's next earns (`EarningsHeld`), decided by the partition's writer.
//!
//! The risk fold writes an outbox row when a member's rule fires and
//! deletes it when it folds that member's `AlertRaised` of it, in the same
//! WriteBatch as its other changes (a rebuild does the same, so a rebuild
//! raises nothing that was raised). This worker submits a `RaiseAlert`
//! command for each row of a partition this instance writes, with request
//! id `alert:<alert id>`: a second submission is answered from the first
//! (every instance folds every partition and keeps its own outbox; only the
//! partition's writer raises). An alert older than [`OUTBOX_MAX_AGE_MS`]
//! when met (a books rebuild of an old log) is dropped, not raised.
//!
//! Programme-wide alerts (spikes, an address for many members, a record
//! every reader skips) belong to no member: every [`PROGRAMME_ALERTS_EVERY`]
//! the worker lists those of the last day from its books, as `ListAlerts`
//! would, and raises each not raised yet as a `ProgrammeAlertRaised` of the
//! control stream (request id `alert:<alert id>`: the log keeps the first,
//! whichever instance appended it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::risk::{alert_id, RAISE_PREFIX};
use crate::clock::Clock;
use crate::domain::{AccountKey, Command, CommandBody, Millis};
use crate::log::codec::{account_key_from_wire, instant_millis};
use crate::programmes::SharedRegistry;
use crate::proto::state;
use crate::store::{self, Cf, Db};
use crate::writer::{WriteError, Writers};

/// How often the outbox is looked at.
const RAISER_POLL_MS: u64 = 200;
/// Rows one look submits at most.
const RAISER_ROWS_MAX: usize = 1000;
/// How long a submitted row waits for the fold to delete it before it is
/// submitted again.
const RAISER_RESUBMIT_AFTER: Duration = Duration::from_secs(30);
/// How often programme-wide alerts are looked for.
const PROGRAMME_ALERTS_EVERY: Duration = Duration::from_secs(2);
/// The rules whose alerts are the programme's, not a member's.
const PROGRAMME_RULES: [&str; 5] =
    ["issuance_spike", "redemption_spike", "shared_address", "shared_spend_address", super::risk::QUARANTINED_RULE];
/// Alerts older than this (by their decision time) are not raised.
pub const OUTBOX_MAX_AGE_MS: Millis = 24 * 3_600_000;

pub struct Raiser {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the worker needs.
pub struct RaiserParts {
    pub books: Arc<Db>,
    pub writers: Arc<Writers>,
    pub registry: SharedRegistry,
    pub programmes: Arc<crate::programmes::Programmes>,
    pub clock: Arc<dyn Clock>,
    /// Where raised alerts are counted.
    pub metrics: crate::metrics::Metrics,
}

/// Counts an alert raised (not a retry's answer) under its rule.
fn count_raised(metrics: &crate::metrics::Metrics, rule: &str) {
    metrics.counter(crate::metrics::ALERTS, &[("rule", rule.to_string())]).increment(1);
}

impl Raiser {
    pub fn start(parts: RaiserParts) -> anyhow::Result<Raiser> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new().name("alert-raiser".into()).spawn(move || {
                let mut submitted: HashMap<Vec<u8>, Instant> = HashMap::new();
                let mut sweep = Vec::new();
                let mut looked = Instant::now() - PROGRAMME_ALERTS_EVERY;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = step(&parts, &mut submitted, &mut sweep) {
                        tracing::warn!(error = %e, "alert raiser; retrying");
                    }
                    if looked.elapsed() >= PROGRAMME_ALERTS_EVERY {
                        looked = Instant::now();
                        if let Err(e) = programme_alerts(&parts) {
                            tracing::warn!(error = %e, "alert raiser (programme alerts); retrying");
                        }
                    }
                    std::thread::sleep(Duration::from_millis(RAISER_POLL_MS));
                }
            })?
        };
        Ok(Raiser { stop, thread: Some(thread) })
    }

    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The command that raises a stored alert, when it names a member.
fn raise(alert: &state::Alert, registry: &SharedRegistry) -> Option<Command> {
    let account: AccountKey = account_key_from_wire(alert.accounts.first()?.clone());
    let programme = registry.read().expect("registry lock").current(&account.programme());
    let hold = programme.is_some_and(|p| p.risk.holds(&alert.rule));
    let mut figures: Vec<String> = alert.figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
    figures.sort();
    let id = alert_id(alert);
    Some(Command {
        request_id: format!("alert:{id}"),
        account,
        body: CommandBody::RaiseAlert {
            alert_id: id,
            rule: alert.rule.clone(),
            detail: format!("{} ({})", alert.subject, figures.join(", ")),
            hold,
        },
        context: Default::default(),
    })
}

/// Raises the programme-wide alerts of the last day not raised yet.
fn programme_alerts(parts: &RaiserParts) -> anyhow::Result<()> {
    let now = parts.clock.now();
    let programmes = parts.registry.read().expect("registry lock").all_current();
    for p in programmes {
        let from = now.saturating_sub(OUTBOX_MAX_AGE_MS);
        for a in super::risk::alerts(&parts.books, &p, from, now.saturating_add(1))? {
            if !PROGRAMME_RULES.contains(&a.rule.as_str()) {
                continue;
            }
            let id = alert_id(&a);
            let raised =
                parts.registry.read().expect("registry lock").admin_request_at(&p.tenant_id, &format!("alert:{id}"));
            if raised.is_some() {
                continue;
            }
            let mut figures: Vec<String> = a.figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
            figures.sort();
            let alert = crate::log::record::ProgrammeAlert {
                programme: p.key(),
                alert_id: id,
                rule: a.rule.clone(),
                detail: format!("{} ({})", a.subject, figures.join(", ")),
            };
            match parts.programmes.raise_programme_alert(alert, now) {
                Ok((_, false)) => count_raised(&parts.metrics, &a.rule),
                Ok((_, true)) => {}
                Err(e) => tracing::warn!(error = %e, "a programme alert could not be raised; tried again later"),
            }
        }
    }
    Ok(())
}

/// Whether a stored alert is older than what is still raised (or unreadable).
fn stale(value: &[u8], now: Millis) -> bool {
    let alert = store::decode_row::<state::Alert>(value).ok();
    let at = alert.as_ref().and_then(|a| a.at.as_ref()).and_then(instant_millis).unwrap_or(0);
    at <= now.saturating_sub(OUTBOX_MAX_AGE_MS)
}

/// Submits the rows of each partition this instance writes (a bounded
/// number each), and drops the stale rows of a stretch of the outbox
/// (whoever's partition: rows no fold will ever delete).
fn step(parts: &RaiserParts, submitted: &mut HashMap<Vec<u8>, Instant>, sweep: &mut Vec<u8>) -> anyhow::Result<()> {
    let now = parts.clock.now();
    let mut dropped = store::Batch::default();
    let swept = parts.books.scan(Cf::Outbox, RAISE_PREFIX, &sweep[..], RAISER_ROWS_MAX)?;
    *sweep = swept.last().map_or_else(Vec::new, |(k, _)| [k.as_slice(), &[0]].concat());
    for (key, _) in swept.iter().filter(|(_, v)| stale(v, now)) {
        dropped.delete(Cf::Outbox, key);
    }
    let mut seen = Vec::new();
    for partition in (0..parts.writers.partitions()).filter(|p| parts.writers.owns(*p)) {
        let prefix = store::risk::raise_prefix(partition);
        for (key, value) in parts.books.scan(Cf::Outbox, &prefix, &prefix, RAISER_ROWS_MAX)? {
            seen.push(key.clone());
            if submitted.contains_key(&key) || stale(&value, now) {
                continue;
            }
            let alert = store::decode_row::<state::Alert>(&value).ok();
            let Some(command) = alert.as_ref().and_then(|a| raise(a, &parts.registry)) else {
                dropped.delete(Cf::Outbox, &key);
                continue;
            };
            submitted.insert(key.clone(), Instant::now());
            match futures_executor::block_on(parts.writers.submit(command)) {
                Ok(reply) if !reply.replayed => {
                    count_raised(&parts.metrics, alert.as_ref().map_or("", |a| a.rule.as_str()))
                }
                // Decided, or to try again: the partition is busy or settling more than is due.
                Ok(_) | Err(WriteError::Unavailable(_)) => {}
                Err(WriteError::Rejected(r)) if r.reason == crate::domain::Reason::SettlingDue => {}
                Err(e) => {
                    tracing::warn!(error = %e, "an alert could not be raised in its partition; dropped");
                    dropped.delete(Cf::Outbox, &key);
                }
            }
        }
    }
    submitted.retain(|k, at| at.elapsed() < RAISER_RESUBMIT_AFTER && seen.contains(k));
    parts.books.write(dropped)?;
    Ok(())
}
