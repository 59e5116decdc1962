//! The floors `bench --floors` measures in the same run as the load: what
//! the log underneath costs at the least (plain RocksDB synced WriteBatches,
//! random-key memtable rows, or the raw Kafka producer with the service's
//! producer settings), so a figure can be read as a ratio of what the
//! machine can do. Measurement code: it names RocksDB and librdkafka
//! directly, and never runs in the service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use points_ledger::log::kafka::{ensure_topic, KafkaConfig};
use points_ledger::log::LogError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// Plain RocksDB (one column family, default options, so 64 MiB memtables)
/// in `dir` taking WriteBatches of `batch_records` rows of `record_bytes`,
/// the n-th row keyed `key(n)`, for about `duration`, with the WAL synced or
/// not. Returns the rows written and the time taken.
fn write_floor(
    dir: &std::path::Path,
    duration: std::time::Duration,
    batch_records: usize,
    record_bytes: usize,
    sync: bool,
    mut key: impl FnMut(u64) -> Vec<u8>,
) -> Result<(u64, std::time::Duration), rocksdb::Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, dir)?;
    let mut write = rocksdb::WriteOptions::default();
    write.set_sync(sync);
    let value = vec![0x5au8; record_bytes];
    let started = std::time::Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < duration {
        let mut batch = rocksdb::WriteBatch::default();
        for _ in 0..batch_records {
            batch.put(key(rows), &value);
            rows += 1;
        }
        db.write_opt(batch, &write)?;
    }
    Ok((rows, started.elapsed()))
}

/// The floor under every log append, for `bench --floors`: sequential keys,
/// synced WAL.
pub fn sync_write_batch_floor(
    dir: &std::path::Path,
    duration: std::time::Duration,
    batch_records: usize,
    record_bytes: usize,
) -> Result<(u64, std::time::Duration), rocksdb::Error> {
    write_floor(dir, duration, batch_records, record_bytes, true, |n| n.to_be_bytes().to_vec())
}

/// The floor under every memtable row: random 24-byte keys (as account and
/// request keys are), WAL written but not synced (as the state databases
/// write).
pub fn random_key_write_floor(
    dir: &std::path::Path,
    duration: std::time::Duration,
    batch_records: usize,
    record_bytes: usize,
) -> Result<(u64, std::time::Duration), rocksdb::Error> {
    // xorshift64*: keys spread over the whole key space, no repeats to speak of.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    write_floor(dir, duration, batch_records, record_bytes, false, move |n| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let mut key = b"t\0p\0m:\0\0".to_vec();
        key.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_be_bytes());
        key.extend_from_slice(&n.to_be_bytes());
        key
    })
}

/// The raw producer floor for `bench --floors`: the records librdkafka
/// alone delivers in about `duration` (and the time it took, flush included) to the same broker with the service's producer settings
/// (idempotent, acks=all), records of `record_bytes`, round-robin over the
/// partitions of a scratch topic `<topic>-floor` (never the ledger's own).
pub fn raw_producer_floor(
    config: &KafkaConfig,
    duration: Duration,
    record_bytes: usize,
) -> Result<(u64, Duration), LogError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Records sent and not yet reported at most.
    const FLOOR_IN_FLIGHT_MAX: u64 = 20_000;
    struct Count(Arc<AtomicU64>, Arc<AtomicU64>);
    impl ClientContext for Count {}
    impl ProducerContext for Count {
        type DeliveryOpaque = ();
        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            let counter = if result.is_ok() { &self.0 } else { &self.1 };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut scratch = config.clone();
    scratch.topic = format!("{}-floor", config.topic);
    // A floor measures throughput; a slow broker must not turn it into failures.
    scratch.append_timeout = Duration::from_secs(60);
    ensure_topic(&scratch)?;
    let (delivered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let producer: ThreadedProducer<Count> = scratch
        .producer()
        .create_with_context(Count(delivered.clone(), failed.clone()))
        .map_err(|e| LogError::Unavailable(format!("producer: {e}")))?;
    let payload = vec![0x5au8; record_bytes];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        if sent - delivered.load(Ordering::Relaxed) - failed.load(Ordering::Relaxed) >= FLOOR_IN_FLIGHT_MAX {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let key = sent.to_be_bytes();
        let record = BaseRecord::to(&scratch.topic)
            .partition((sent % u64::from(scratch.partitions)) as i32)
            .key(&key[..])
            .payload(&payload[..]);
        match producer.send(record) {
            Ok(()) => sent += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err((e, _)) => return Err(LogError::Unavailable(format!("floor produce: {e}"))),
        }
    }
    producer.flush(scratch.append_timeout).map_err(|e| LogError::Unavailable(format!("floor flush: {e}")))?;
    let took = started.elapsed();
    if failed.load(Ordering::Relaxed) > 0 {
        return Err(LogError::Unavailable(format!("{} floor records failed", failed.load(Ordering::Relaxed))));
    }
    Ok((delivered.load(Ordering::Relaxed), took))
}
