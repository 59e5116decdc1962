//! The gauges that are read, not counted: every second, how far the views
//! and the books trail the log (records, and seconds since each last had
//! every record), what RocksDB says of compactions and stalls, the Kafka
//! producer's statistics and the webhooks' lag; every ten seconds, each
//! programme's day so far from the books (issued, spent, expired, pending).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Ledger;
use crate::domain::calendar;
use crate::metrics::{self as m, Metrics};
use crate::store::Db;

const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Programmes' day books are read every this many samples.
const BOOKS_EVERY_SAMPLES: u64 = 10;
/// Programmes whose day is sampled at most (the rest are left out).
const PROGRAMMES_SAMPLED_MAX: usize = 1000;

/// When each reader of each partition last had every record.
#[derive(Default)]
struct CaughtUp(HashMap<(&'static str, u32), Instant>);

/// Samples until the service stops.
pub async fn run(ledger: Arc<Ledger>, metrics: Metrics) {
    let mut caught_up = CaughtUp::default();
    let mut samples = 0u64;
    while !ledger.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        let (l, m) = (ledger.clone(), metrics.clone());
        let books_too = samples.is_multiple_of(BOOKS_EVERY_SAMPLES);
        caught_up = tokio::task::spawn_blocking(move || {
            sample(&l, &m, &mut caught_up, books_too);
            caught_up
        })
        .await
        .unwrap_or_default();
        samples += 1;
        tokio::time::sleep(SAMPLE_INTERVAL).await;
    }
}

fn sample(ledger: &Ledger, metrics: &Metrics, caught_up: &mut CaughtUp, books_too: bool) {
    lags(ledger, metrics, caught_up);
    writer_modes(ledger, metrics);
    for (name, db) in [("views", &ledger.views), ("books", &ledger.books)] {
        rocksdb(metrics, name, db);
    }
    for (figure, value) in ledger.events.figures() {
        metrics.gauge(m::KAFKA, &[("figure", figure.to_string())]).set_signed(value);
    }
    webhooks(ledger, metrics);
    metrics.upkeep();
    if books_too {
        programme_days(ledger, metrics);
    }
}

fn lags(ledger: &Ledger, metrics: &Metrics, caught_up: &mut CaughtUp) {
    let now = Instant::now();
    for p in 0..ledger.events.partitions() {
        let Ok(end) = ledger.events.end_offset(p) else { continue };
        for (reader, db) in [("views", &ledger.views), ("books", &ledger.books)] {
            let Ok(at) = crate::store::read_position(db, p) else { continue };
            let behind = end.saturating_sub(at);
            let since = caught_up.0.entry((reader, p)).or_insert(now);
            if behind == 0 {
                *since = now;
            }
            let labels = [("reader", reader.to_string()), ("partition", p.to_string())];
            metrics.gauge(m::LAG_RECORDS, &labels).set(behind);
            metrics.gauge(m::LAG_SECONDS, &labels).set_duration(now.duration_since(*since));
        }
    }
}

/// Each partition's writer mode, one series per mode (1 for the current).
fn writer_modes(ledger: &Ledger, metrics: &Metrics) {
    let ownership = ledger.writers.ownership();
    for p in 0..ledger.writers.partitions() {
        let now = ownership.status(p);
        for mode in crate::writer::Mode::ALL {
            let labels = [("partition", p.to_string()), ("mode", mode.name().to_string())];
            metrics.gauge(m::WRITER_MODE, &labels).set(u64::from(mode == now));
        }
    }
}

fn rocksdb(metrics: &Metrics, name: &str, db: &Db) {
    let c = db.condition();
    let labels = [("database", name.to_string())];
    metrics.gauge(m::ROCKSDB_COMPACTIONS, &labels).set(c.running_compactions);
    metrics.gauge(m::ROCKSDB_PENDING_BYTES, &labels).set(c.pending_compaction_bytes);
    metrics.gauge(m::ROCKSDB_STOPPED, &labels).set(u64::from(c.write_stopped));
    metrics.gauge(m::ROCKSDB_DELAYED_RATE, &labels).set(c.delayed_write_rate);
    for (cause, n) in c.stalls {
        metrics.gauge(m::ROCKSDB_STALLS, &[("database", name.to_string()), ("cause", cause)]).set(n);
    }
}

fn webhooks(ledger: &Ledger, metrics: &Metrics) {
    let mut lag: HashMap<(String, String, String), u64> = HashMap::new();
    for (key, state) in ledger.deliveries.lock().expect("deliveries lock").iter() {
        let behind = state.end.saturating_sub(state.read_to) + u64::from(state.next.is_some());
        *lag.entry((key.0.tenant_id.clone(), key.0.programme_id.clone(), key.1.clone())).or_default() += behind;
    }
    for ((tenant, programme, webhook), n) in lag {
        let labels = [("tenant", tenant), ("programme", programme), ("webhook", webhook)];
        metrics.gauge(m::WEBHOOK_LAG, &labels).set(n);
    }
}

/// Each programme's day so far, from the books (the programme's time zone).
fn programme_days(ledger: &Ledger, metrics: &Metrics) {
    let registry = ledger.programmes.registry();
    let programmes = registry.read().expect("registry lock").all_current();
    let now = ledger.clock.now();
    for programme in programmes.iter().take(PROGRAMMES_SAMPLED_MAX) {
        let day = calendar::programme_day(programme.time_zone, now);
        let Ok(book) = crate::finance::books::daily_book(&ledger.books, programme, ledger.events.partitions(), day)
        else {
            continue;
        };
        let key = programme.key();
        for (movement, points) in [
            ("issued", book.issued),
            ("spent", book.spent),
            ("refunded", book.refunded),
            ("reversed", book.reversed),
            ("expired", book.expired),
            ("pending_earned", book.pending_earned),
            ("pending", book.pending),
            ("balance", book.closing_balance),
        ] {
            let labels = [
                ("tenant", key.tenant_id.clone()),
                ("programme", key.programme_id.clone()),
                ("movement", movement.to_string()),
            ];
            metrics.gauge(m::PROGRAMME_POINTS, &labels).set_signed(points);
        }
    }
}
