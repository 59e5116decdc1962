//! The service's metrics: the one module that knows the `metrics` crates.
//!
//! Each service has a recorder of its own (not the process-wide one), so
//! several services in one process (the tests) count apart. Parts take the
//! handles they update once, at start, from a [`Metrics`]; the admin
//! listener renders them in the Prometheus text format. Names follow
//! Prometheus's conventions: the `points_ledger_` prefix, the unit in the
//! name, `_total` for counters. No label ever names a member.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use metrics::Counter;
use metrics::{Key, Label, Metadata, Recorder, Unit};

/// A histogram of durations (in seconds) or of counts.
#[derive(Clone)]
pub struct Histogram(metrics::Histogram);

impl Histogram {
    pub fn duration(&self, d: Duration) {
        self.0.record(d.as_secs_f64());
    }

    pub fn count(&self, n: usize) {
        self.0.record(n as f64);
    }
}

/// A value read at one moment.
#[derive(Clone)]
pub struct Gauge(metrics::Gauge);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.set(v as f64);
    }

    pub fn set_signed(&self, v: i64) {
        self.0.set(v as f64);
    }

    pub fn set_duration(&self, d: Duration) {
        self.0.set(d.as_secs_f64());
    }
}
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Latency buckets, in seconds: 50 µs to 10 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Commands a writer batch holds: 1 to 65,536.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 65536.0];

/// What every metric is, for the `# HELP` lines.
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (GRPC_HANDLED, Kind::Counter, "gRPC calls completed, by method (rpc) and status code (code)"),
    (GRPC_SECONDS, Kind::Histogram, "time from a gRPC call's arrival to its last byte, by method"),
    (BATCH_COMMANDS, Kind::Histogram, "commands a writer decided and appended together"),
    (APPEND_SECONDS, Kind::Histogram, "time a writer's append to the log took (the fsync included)"),
    (FSYNC_SECONDS, Kind::Histogram, "time the embedded log's fsync took"),
    (QUEUE_COMMANDS, Kind::Gauge, "commands waiting for a partition's writer"),
    (CACHE_ACCOUNTS, Kind::Gauge, "accounts a partition's writer keeps between batches, decoded or as one row each"),
    (CACHE_BYTES, Kind::Gauge, "what the accounts a partition's writer keeps weigh, about, in bytes"),
    (WRITER_MODE, Kind::Gauge, "1 for the mode each partition's writer is in, 0 for the others"),
    (LAG_RECORDS, Kind::Gauge, "records of the log a reader has not folded yet, by reader and partition"),
    (LAG_SECONDS, Kind::Gauge, "how long since a reader last had every record of its partition, by reader"),
    (ROCKSDB_COMPACTIONS, Kind::Gauge, "RocksDB compactions running, by database"),
    (ROCKSDB_PENDING_BYTES, Kind::Gauge, "bytes RocksDB estimates its compactions have to rewrite"),
    (ROCKSDB_STOPPED, Kind::Gauge, "1 while RocksDB stops writes (a stall), by database"),
    (ROCKSDB_DELAYED_RATE, Kind::Gauge, "the rate RocksDB slows writes to (0: not delayed)"),
    (ROCKSDB_STALLS, Kind::Gauge, "write stalls and slowdowns since the database opened, by cause"),
    (KAFKA, Kind::Gauge, "the Kafka log's figures: librdkafka's statistics of its producer, its readers' receipts"),
    (
        PROGRAMME_POINTS,
        Kind::Gauge,
        "a programme's day so far (its time zone) from the books, by movement; pending and balance at the end",
    ),
    (ALERTS, Kind::Counter, "alerts raised as events, by rule"),
    (WEBHOOK_DELIVERIES, Kind::Counter, "webhook POSTs, by outcome (delivered, failed)"),
    (WEBHOOK_LAG, Kind::Gauge, "records of the log a webhook's deliveries have not reached yet, by webhook"),
];

pub const GRPC_HANDLED: &str = "points_ledger_grpc_server_handled_total";
pub const GRPC_SECONDS: &str = "points_ledger_grpc_server_handling_seconds";
pub const BATCH_COMMANDS: &str = "points_ledger_writer_batch_commands";
pub const APPEND_SECONDS: &str = "points_ledger_log_append_seconds";
pub const FSYNC_SECONDS: &str = "points_ledger_log_fsync_seconds";
pub const QUEUE_COMMANDS: &str = "points_ledger_writer_queue_commands";
pub const WRITER_MODE: &str = "points_ledger_writer_mode";
pub const CACHE_ACCOUNTS: &str = "points_ledger_writer_cache_accounts";
pub const CACHE_BYTES: &str = "points_ledger_writer_cache_bytes";
pub const LAG_RECORDS: &str = "points_ledger_lag_records";
pub const LAG_SECONDS: &str = "points_ledger_lag_seconds";
pub const ROCKSDB_COMPACTIONS: &str = "points_ledger_rocksdb_running_compactions";
pub const ROCKSDB_PENDING_BYTES: &str = "points_ledger_rocksdb_pending_compaction_bytes";
pub const ROCKSDB_STOPPED: &str = "points_ledger_rocksdb_write_stopped";
pub const ROCKSDB_DELAYED_RATE: &str = "points_ledger_rocksdb_delayed_write_rate_bytes_per_second";
pub const ROCKSDB_STALLS: &str = "points_ledger_rocksdb_write_stalls";
pub const KAFKA: &str = "points_ledger_kafka";
pub const PROGRAMME_POINTS: &str = "points_ledger_programme_points";
pub const ALERTS: &str = "points_ledger_alerts_raised_total";
pub const WEBHOOK_DELIVERIES: &str = "points_ledger_webhook_deliveries_total";
pub const WEBHOOK_LAG: &str = "points_ledger_webhook_lag_records";

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A service's metrics. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The gRPC calls' handles by (method, code), made on first use.
    calls: RwLock<HashMap<(&'static str, &'static str), CallHandles>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A gRPC method's counter (of one code) and latency histogram.
type CallHandles = (Counter, Histogram);

/// Labels as `(name, value)` pairs.
pub type Labels<'a> = &'a [(&'static str, String)];

fn key(name: &'static str, labels: Labels<'_>) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect::<Vec<_>>())
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_COMMANDS.into()), BATCH_BUCKETS))
            .expect("the buckets are not empty")
            .build_recorder();
        for (name, kind, help) in DESCRIPTIONS {
            let (name, help) = ((*name).into(), (*help).into());
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, Some(Unit::Seconds), help),
            }
        }
        let handle = recorder.handle();
        Metrics { inner: Arc::new(Inner { recorder, handle, calls: RwLock::default() }) }
    }

    pub fn counter(&self, name: &'static str, labels: Labels<'_>) -> Counter {
        self.inner.recorder.register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: Labels<'_>) -> Gauge {
        Gauge(self.inner.recorder.register_gauge(&key(name, labels), &METADATA))
    }

    pub fn histogram(&self, name: &'static str, labels: Labels<'_>) -> Histogram {
        Histogram(self.inner.recorder.register_histogram(&key(name, labels), &METADATA))
    }

    /// Counts one completed gRPC call of `rpc` (a method this service
    /// serves, or `unknown`) ending with `code` (the gRPC code's name, as
    /// grpc-prometheus spells it: `OK`, `NOT_FOUND`, ...) after `took`.
    pub fn call(&self, rpc: &'static str, code: &'static str, took: Duration) {
        let found = self.inner.calls.read().expect("calls lock").get(&(rpc, code)).cloned();
        let (counter, histogram) = found.unwrap_or_else(|| {
            let made = (
                self.counter(GRPC_HANDLED, &[("rpc", rpc.to_string()), ("code", code.to_string())]),
                self.histogram(GRPC_SECONDS, &[("rpc", rpc.to_string())]),
            );
            self.inner.calls.write().expect("calls lock").insert((rpc, code), made.clone());
            made
        });
        counter.increment(1);
        histogram.duration(took);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    /// Folds recorded observations into the histograms (bounds memory
    /// between scrapes).
    pub fn upkeep(&self) {
        self.inner.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_services_count_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let ms = Duration::from_millis;
        a.call("Earn", "OK", ms(1));
        a.call("Earn", "OK", ms(2));
        b.call("Earn", "NOT_FOUND", ms(1));
        let text = a.render();
        assert!(text.contains(r#"points_ledger_grpc_server_handled_total{rpc="Earn",code="OK"} 2"#), "{text}");
        assert!(!text.contains("NOT_FOUND"), "{text}");
        assert!(text.contains(r#"points_ledger_grpc_server_handling_seconds_bucket{rpc="Earn",le="0.005"} 2"#));
    }
}
