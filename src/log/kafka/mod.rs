//! The Kafka log: the same [`EventLog`] over a Kafka topic, for deployments
//! that span machines. One topic partition per log partition; offsets are
//! Kafka's offsets.
//!
//! - Appends go through one idempotent producer (`enable.idempotence`,
//!   `acks=all`) to an explicit partition, keyed by the account, and return
//!   only when every record's delivery report came back with its offset, or
//!   fail within the append timeout (+ a margin), which replaces the producer
//!   (librdkafka itself never times a message out). A failed append may still
//!   have landed: the writers (src/writer/follow.rs) settle that by reading the log
//!   and, on this shared log, by claiming a new epoch.
//! - Readers are consumers assigned to one partition at an offset (no group
//!   membership, no committed offsets: every reader keeps its position in its
//!   own RocksDB, in the same WriteBatch as what it folded).
//! - `open` creates the topic with the configured partition count, or refuses
//!   an existing topic whose count differs.

pub mod group;

use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{EventLog, LogEntry, LogError, LogReader, LogRecord};

/// How a service reaches its broker and topic.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Bootstrap servers, `HOST:PORT[,HOST:PORT...]`.
    pub brokers: String,
    pub topic: String,
    pub partitions: u32,
    /// Used when the topic is created.
    pub replication_factor: i32,
    /// Longest time an append may take before it fails; then the producer is
    /// replaced (see [`KafkaConfig::producer`]).
    pub append_timeout: Duration,
    /// Longest time for metadata and watermark queries.
    pub request_timeout: Duration,
    /// Extra librdkafka properties (`key=value`), applied to every client.
    pub properties: Vec<(String, String)>,
    /// Create the topic when it does not exist (the service does; tools do not).
    pub create_topics: bool,
}

/// librdkafka's and the brokers' default largest message
/// (`message.max.bytes`, `max.message.bytes`).
const MESSAGE_BYTES_DEFAULT: usize = 1_000_000;
/// What a message carries besides its payload: its key (the account, at most
/// 3 × 64 bytes and two slashes) and the record batch's framing.
const MESSAGE_OVERHEAD_BYTES: usize = 1024;

impl KafkaConfig {
    /// The largest payload an append may carry: `message.max.bytes` (as
    /// given with `--kafka-property`, else Kafka's default) less a message's
    /// overhead. The topic's `max.message.bytes` must be at least as large.
    pub fn record_bytes_max(&self) -> usize {
        let given =
            self.properties.iter().rev().find(|(k, _)| k == "message.max.bytes").and_then(|(_, v)| v.parse().ok());
        given.unwrap_or(MESSAGE_BYTES_DEFAULT).saturating_sub(MESSAGE_OVERHEAD_BYTES)
    }

    pub fn new(brokers: &str, topic: &str, partitions: u32) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic: topic.into(),
            partitions,
            replication_factor: 1,
            append_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            properties: Vec::new(),
            create_topics: true,
        }
    }

    /// Settings every client shares, then `role`'s, then the operator's
    /// `--kafka-property` values, which win over both.
    fn build(&self, role: &[(&str, String)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "points-ledger")
            .set("socket.timeout.ms", ms(self.request_timeout).max(10).to_string())
            .set("log_level", "4");
        for (k, v) in role {
            c.set(*k, v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    fn client(&self) -> ClientConfig {
        self.build(&[])
    }

    /// The producer settings of the service's appends (the bench's raw
    /// producer floor uses the same).
    ///
    /// librdkafka never times a message out itself (`message.timeout.ms` 0):
    /// the append's own deadline fails the append and replaces the producer.
    /// A message that librdkafka times out makes its idempotent producer
    /// bump its epoch (an InitProducerId that names the current producer id,
    /// KIP-360); a broker without that request panics on it (tansu 0.6.0
    /// does, and then answers nothing until it is restarted). A new producer
    /// asks for a new id, which every broker answers.
    pub fn producer(&self) -> ClientConfig {
        let timeout = ms(self.append_timeout).max(10).to_string();
        self.build(&[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("linger.ms", "1".into()),
            ("message.timeout.ms", "0".into()),
            ("request.timeout.ms", timeout),
        ])
    }

    fn consumer(&self) -> ClientConfig {
        self.consumer_fetching(Fetch::Tail)
    }

    fn consumer_fetching(&self, fetch: Fetch) -> ClientConfig {
        let wait_ms = match fetch {
            Fetch::Tail => FETCH_WAIT_MS,
            Fetch::Follow => FOLLOW_FETCH_WAIT_MS,
        };
        self.build(&[
            ("group.id", "points-ledger-readers".into()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("enable.partition.eof", "false".into()),
            // Never skip: an offset the broker no longer has is an error,
            // not a reason to jump to another one.
            ("auto.offset.reset", "error".into()),
            ("allow.auto.create.topics", "false".into()),
            ("fetch.wait.max.ms", wait_ms.to_string()),
        ])
    }
}

/// How a reader's consumer fetches.
#[derive(Clone, Copy)]
enum Fetch {
    /// A writer reading its batch back, the control stream, tools.
    Tail,
    /// A reader that may trail the end by a moment: its fetches may wait
    /// longer at the end, so it asks the broker less often.
    Follow,
}

/// Longest a fetch waits for records at the end of a partition
/// (`fetch.wait.max.ms`). Kafka answers as soon as a record is there; tansu
/// 0.6.0 reads once and then sleeps out the wait (half of it from 250 ms
/// up), so there the wait is also how late a record just appended is seen.
/// 50 ms cost tansu a quarter of a core for one idle instance and made
/// commands slower (10,100/s) than 100 ms (10,900/s) or 500 ms (11,300/s);
/// 100 ms keeps reading a claim or a configuration back quick.
const FETCH_WAIT_MS: u32 = 100;
/// The same for followers and the books, which may trail by a moment: three
/// instances on one tansu did 3,300/s with 50 ms, 4,700/s with 300 ms and
/// 4,900-5,200/s with 1 s (BENCHMARKS.md).
const FOLLOW_FETCH_WAIT_MS: u32 = 1000;

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("kafka {what}: {e}"))
}

/// Where a delivery report goes: the appending thread's channel and the
/// record's index in its batch.
struct Slot {
    tx: mpsc::Sender<(usize, Result<i64, String>)>,
    index: usize,
}

/// The producer's context: delivery reports, and its latest statistics.
struct Deliveries {
    figures: Figures,
}

/// librdkafka's latest statistics of the producer, as metric figures.
type Figures = Arc<std::sync::Mutex<Vec<(&'static str, i64)>>>;

/// How often librdkafka reports the producer's statistics.
const STATISTICS_INTERVAL_MS: &str = "5000";

impl ClientContext for Deliveries {
    fn stats(&self, s: rdkafka::Statistics) {
        let rtt_max = s.brokers.values().filter_map(|b| b.rtt.as_ref()).map(|w| w.p99).max().unwrap_or(0);
        let figures = vec![
            ("producer_queue_messages", i64::try_from(s.msg_cnt).unwrap_or(i64::MAX)),
            ("producer_queue_bytes", i64::try_from(s.msg_size).unwrap_or(i64::MAX)),
            ("producer_requests_sent", s.tx),
            ("producer_bytes_sent", s.tx_bytes),
            ("producer_messages_sent", s.txmsgs),
            ("producer_broker_rtt_p99_microseconds", rtt_max),
        ];
        *self.figures.lock().expect("figures lock") = figures;
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        let outcome = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.to_string()),
        };
        let _ = slot.tx.send((slot.index, outcome));
    }
}

type Prod = ThreadedProducer<Deliveries>;

/// What the log's readers have received, counted as they read (their
/// consumers live too briefly for librdkafka's periodic statistics):
/// records, and payload bytes.
type Received = Arc<[std::sync::atomic::AtomicU64; 2]>;

pub struct KafkaLog {
    config: KafkaConfig,
    /// Replaced when librdkafka reports the idempotent producer's state as
    /// fatal (it cannot be used any more after that).
    producer: RwLock<Arc<Prod>>,
    /// For watermark queries; replaced after a failure (a client that lost
    /// its broker can keep timing out after the broker is back).
    meta: RwLock<Arc<BaseConsumer>>,
    /// The producer's latest statistics.
    figures: Figures,
    /// What the readers have received.
    received: Received,
}

/// The CloudEvents spec version the headers follow.
const CLOUD_EVENTS_SPEC_VERSION: &str = "1.0";

impl KafkaLog {
    /// A record's CloudEvents headers (the Kafka protocol binding, binary
    /// mode): consumers tell account records from claims and choose events
    /// without decoding the payload.
    fn cloud_event_headers(&self, about: &super::About) -> OwnedHeaders {
        let time = chrono::DateTime::from_timestamp_millis(about.at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let source = format!("points-ledger/{}", self.config.topic);
        let content_type = format!("application/protobuf; messageType={}", about.kind.message());
        let mut headers = OwnedHeaders::new_with_capacity(7)
            .insert(Header { key: "ce_specversion", value: Some(CLOUD_EVENTS_SPEC_VERSION) })
            .insert(Header { key: "ce_type", value: Some(about.kind.event_type()) })
            .insert(Header { key: "ce_id", value: Some(about.id.as_str()) })
            .insert(Header { key: "ce_source", value: Some(source.as_str()) })
            .insert(Header { key: "ce_time", value: Some(time.as_str()) })
            .insert(Header { key: "content-type", value: Some(content_type.as_str()) });
        if !about.subject.is_empty() {
            headers = headers.insert(Header { key: "ce_subject", value: Some(about.subject.as_str()) });
        }
        headers
    }

    /// Connects, creates the topic when it does not exist, and checks the
    /// partition count of one that does.
    pub fn open(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        let meta: BaseConsumer = config.consumer().create().map_err(|e| unavailable("client", e))?;
        match topic_partitions(&meta, &config)? {
            Some(n) if n == config.partitions => {}
            Some(n) => {
                return Err(LogError::Corrupt(format!(
                    "topic {} has {n} partitions but {} are configured; the partition count of a ledger topic \
                     cannot change (accounts would move between partitions). Configure {n}, or use a new topic",
                    config.topic, config.partitions
                )))
            }
            None if config.create_topics => create_topic(&config)?,
            None => {
                return Err(LogError::Unavailable(format!(
                    "topic {} does not exist on {}",
                    config.topic, config.brokers
                )))
            }
        }
        let figures = Figures::default();
        let producer = Arc::new(make_producer(&config, &figures)?);
        tracing::info!(brokers = %config.brokers, topic = %config.topic, partitions = config.partitions, "kafka log open");
        Ok(KafkaLog {
            config,
            producer: RwLock::new(producer),
            meta: RwLock::new(Arc::new(meta)),
            figures,
            received: Received::default(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    fn producer(&self) -> Arc<Prod> {
        self.producer.read().expect("producer lock").clone()
    }

    /// Replaces the producer after an append failed. A fresh producer gets a
    /// new producer id from the broker, which is the only way out when the
    /// broker lost or fenced the old one's idempotence state (seen after a
    /// broker hang: every produce answered `ProducerFenced`) or when
    /// librdkafka marked it fatal. Records the old one still holds may land
    /// later; the writer re-claims after a failed append, so they are void.
    fn renew(&self, current: &Arc<Prod>, why: &str) {
        match current.client().fatal_error() {
            Some((code, reason)) => {
                tracing::warn!(?code, %reason, "kafka producer hit a fatal error; starting a new one")
            }
            None => tracing::warn!(why, "kafka append failed; starting a new producer"),
        }
        if let Ok(p) = make_producer(&self.config, &self.figures) {
            let mut slot = self.producer.write().expect("producer lock");
            if Arc::ptr_eq(&slot, current) {
                *slot = Arc::new(p);
            }
        }
    }

    fn check_partition(&self, partition: u32) -> Result<(), LogError> {
        if partition >= self.config.partitions {
            return Err(LogError::NoPartition(partition));
        }
        Ok(())
    }
}

fn make_producer(config: &KafkaConfig, figures: &Figures) -> Result<Prod, LogError> {
    let mut c = config.producer();
    c.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    c.create_with_context(Deliveries { figures: figures.clone() }).map_err(|e| unavailable("producer", e))
}

/// The topic's partition count, or None when it does not exist.
fn topic_partitions(meta: &BaseConsumer, config: &KafkaConfig) -> Result<Option<u32>, LogError> {
    let md = meta
        .fetch_metadata(Some(&config.topic), config.request_timeout)
        .map_err(|e| unavailable(&format!("metadata from {} (is the broker up?)", config.brokers), e))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == config.topic) else {
        return Ok(None);
    };
    match t.error() {
        None if !t.partitions().is_empty() => Ok(Some(t.partitions().len() as u32)),
        None => Ok(None),
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => Ok(None),
        Some(e) => Err(unavailable("topic metadata", RDKafkaErrorCode::from(e))),
    }
}

/// Creates the configured topic unless it exists (with any partition count).
pub fn ensure_topic(config: &KafkaConfig) -> Result<(), LogError> {
    let meta: BaseConsumer = config.consumer().create().map_err(|e| unavailable("client", e))?;
    if topic_partitions(&meta, config)?.is_none() {
        create_topic(config)?;
    }
    Ok(())
}

fn create_topic(config: &KafkaConfig) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = config.client().create().map_err(|e| unavailable("admin", e))?;
    let topic =
        NewTopic::new(&config.topic, config.partitions as i32, TopicReplication::Fixed(config.replication_factor))
            // A ledger forgets nothing.
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1")
            .set("cleanup.policy", "delete");
    // With 3 replicas or more, an append is acknowledged only once two hold
    // it (the idempotent producer asks every in-sync replica).
    let topic = if config.replication_factor >= 3 { topic.set("min.insync.replicas", "2") } else { topic };
    let options = AdminOptions::new().operation_timeout(Some(config.request_timeout));
    let results = futures_executor::block_on(admin.create_topics([&topic], &options))
        .map_err(|e| unavailable("create topic", e))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic = %config.topic, partitions = config.partitions, "created topic"),
            // Another instance created it meanwhile: check its count.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(unavailable(&format!("create topic {t}"), code)),
        }
    }
    // The broker may take a moment before it serves the new topic's metadata.
    let meta: BaseConsumer = config.consumer().create().map_err(|e| unavailable("client", e))?;
    let deadline = Instant::now() + config.request_timeout * 2;
    loop {
        match topic_partitions(&meta, config)? {
            Some(n) if n == config.partitions => return Ok(()),
            Some(n) => {
                return Err(LogError::Corrupt(format!(
                    "topic {} was created with {n} partitions, not {}",
                    config.topic, config.partitions
                )))
            }
            None if Instant::now() > deadline => {
                return Err(LogError::Unavailable(format!("topic {} not visible after creating it", config.topic)))
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.config.partitions
    }

    fn record_bytes_max(&self) -> usize {
        self.config.record_bytes_max()
    }

    fn shared(&self) -> bool {
        true
    }

    fn figures(&self) -> Vec<(&'static str, i64)> {
        let mut figures = self.figures.lock().expect("figures lock").clone();
        let read = |i: usize| i64::try_from(self.received[i].load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0);
        figures.push(("consumer_messages_received", read(0)));
        figures.push(("consumer_bytes_received", read(1)));
        figures
    }

    fn append(&self, partition: u32, records: &[LogRecord]) -> Result<Vec<u64>, LogError> {
        self.check_partition(partition)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let producer = self.producer();
        let (tx, rx) = mpsc::channel();
        let deadline = Instant::now() + self.config.append_timeout + Duration::from_secs(1);
        for (index, r) in records.iter().enumerate() {
            let mut record = BaseRecord::with_opaque_to(&self.config.topic, Box::new(Slot { tx: tx.clone(), index }))
                .partition(partition as i32)
                .key(&r.key[..])
                .payload(&r.payload[..])
                .headers(self.cloud_event_headers(&r.about));
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        record = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((e, _)) => {
                        // Earlier records of this batch may still land; the
                        // writer settles that through the log.
                        self.renew(&producer, &e.to_string());
                        return Err(unavailable("produce", e));
                    }
                }
            }
        }
        drop(tx);
        let mut offsets = vec![None; records.len()];
        let mut failure = None;
        for _ in 0..records.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, Ok(offset))) => offsets[i] = Some(offset as u64),
                Ok((_, Err(e))) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert_with(|| "no delivery report in time".into());
                    break;
                }
            }
        }
        if let Some(e) = failure {
            self.renew(&producer, &e);
            return Err(unavailable("append", e));
        }
        Ok(offsets.into_iter().map(|o| o.expect("every record reported")).collect())
    }

    fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        self.check_partition(partition)?;
        let meta = self.meta.read().expect("meta lock").clone();
        match meta.fetch_watermarks(&self.config.topic, partition as i32, self.config.request_timeout) {
            Ok((_, high)) => Ok(high.max(0) as u64),
            Err(e) => {
                if let Ok(fresh) = self.config.consumer().create::<BaseConsumer>() {
                    let mut slot = self.meta.write().expect("meta lock");
                    if Arc::ptr_eq(&slot, &meta) {
                        *slot = Arc::new(fresh);
                    }
                }
                Err(unavailable("watermarks", e))
            }
        }
    }

    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn LogReader>, LogError> {
        self.reader_fetching(partition, from, Fetch::Tail)
    }

    fn follower(&self, partition: u32, from: u64) -> Result<Box<dyn LogReader>, LogError> {
        self.reader_fetching(partition, from, Fetch::Follow)
    }
}

impl KafkaLog {
    fn reader_fetching(&self, partition: u32, from: u64, fetch: Fetch) -> Result<Box<dyn LogReader>, LogError> {
        self.check_partition(partition)?;
        let consumer = assigned_consumer(&self.config, partition, from, fetch)?;
        Ok(Box::new(KafkaReader {
            config: self.config.clone(),
            fetch,
            consumer,
            received: self.received.clone(),
            partition: partition as i32,
            position: from,
            trouble_since: None,
        }))
    }
}

fn assigned_consumer(config: &KafkaConfig, partition: u32, from: u64, fetch: Fetch) -> Result<BaseConsumer, LogError> {
    let consumer: BaseConsumer = config.consumer_fetching(fetch).create().map_err(|e| unavailable("consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&config.topic, partition as i32, Offset::Offset(from as i64))
        .map_err(|e| unavailable("assign", e))?;
    consumer.assign(&tpl).map_err(|e| unavailable("assign", e))?;
    Ok(consumer)
}

/// How long a reader keeps a consumer that reports errors and delivers
/// nothing before it starts a fresh one at its position. librdkafka
/// reconnects by itself, but after a broker restart a consumer can stay
/// stuck on the old fetch state.
const READER_RENEW_AFTER_TROUBLE_MS: u64 = 3000;

pub struct KafkaReader {
    config: KafkaConfig,
    fetch: Fetch,
    consumer: BaseConsumer,
    /// The log's count of what its readers received.
    received: Received,
    partition: i32,
    position: u64,
    /// When the consumer first reported an error with nothing delivered since.
    trouble_since: Option<Instant>,
}

impl KafkaReader {
    fn renew_if_stuck(&mut self) {
        let Some(since) = self.trouble_since else { return };
        if since.elapsed() < Duration::from_millis(READER_RENEW_AFTER_TROUBLE_MS) {
            return;
        }
        match assigned_consumer(&self.config, self.partition as u32, self.position, self.fetch) {
            Ok(c) => {
                tracing::warn!(
                    partition = self.partition,
                    position = self.position,
                    "kafka reader starting a new consumer"
                );
                self.consumer = c;
                self.trouble_since = None;
            }
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "kafka reader could not start a new consumer")
            }
        }
    }
}

impl LogReader for KafkaReader {
    fn next_batch(&mut self, max_records: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        self.renew_if_stuck();
        let mut out = Vec::new();
        let started = Instant::now();
        while out.len() < max_records.max(1) {
            // Wait only for the first record; then take what has arrived.
            let timeout = if out.is_empty() { wait.saturating_sub(started.elapsed()) } else { Duration::ZERO };
            match self.consumer.poll(timeout) {
                None => {
                    if !out.is_empty() || started.elapsed() >= wait {
                        break;
                    }
                }
                Some(Ok(m)) => {
                    let offset = m.offset();
                    if m.partition() != self.partition || offset < self.position as i64 {
                        continue;
                    }
                    if offset > self.position as i64 {
                        // Offsets of a ledger topic are dense (no compaction,
                        // no transactions): a jump means the broker skipped
                        // records, and a reader must never skip silently.
                        return Err(LogError::Corrupt(format!(
                            "asked {} partition {} for offset {} and the broker answered from offset {offset}: \
                             records are missing from the log",
                            self.config.topic, self.partition, self.position
                        )));
                    }
                    out.push(LogEntry { offset: offset as u64, payload: m.payload().unwrap_or_default().to_vec() });
                    self.position = offset as u64 + 1;
                    self.trouble_since = None;
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    return Err(LogError::Corrupt(format!(
                        "the broker has no record at offset {} of {} partition {} (out of range): \
                         records are missing from the log",
                        self.position, self.config.topic, self.partition
                    )));
                }
                Some(Err(e)) => {
                    // Callers bound their waits; a consumer that keeps
                    // failing is replaced on a later call.
                    tracing::debug!(partition = self.partition, error = %e, "kafka consumer");
                    self.trouble_since.get_or_insert_with(Instant::now);
                    if !out.is_empty() || started.elapsed() >= wait {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20).min(wait));
                }
            }
        }
        let bytes: usize = out.iter().map(|e| e.payload.len()).sum();
        self.received[0].fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.received[1].fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    fn position(&self) -> u64 {
        self.position
    }
}

/// librdkafka's in-process mock cluster, for fault tests that need a broker
/// to go down and come back on cue. It is not a real broker: the tests on
/// a real Kafka-protocol broker stay the reference.
pub struct MockBroker {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl MockBroker {
    /// One mock broker holding the given topics (the mock cannot create
    /// topics through the admin API, so they are made here).
    pub fn start(topics: &[(&str, u32)]) -> Result<MockBroker, LogError> {
        let cluster = rdkafka::mocking::MockCluster::new(1).map_err(|e| unavailable("mock cluster", e))?;
        for (name, partitions) in topics {
            cluster.create_topic(name, *partitions as i32, 1).map_err(|e| unavailable("mock topic", e))?;
        }
        Ok(MockBroker { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Makes the broker refuse connections (and drop open ones).
    pub fn down(&self) -> Result<(), LogError> {
        self.cluster.broker_down(-1).map_err(|e| unavailable("mock broker down", e))
    }

    pub fn up(&self) -> Result<(), LogError> {
        self.cluster.broker_up(-1).map_err(|e| unavailable("mock broker up", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_for_brokers_behind_tls_and_scram_can_be_made() {
        // librdkafka built without OpenSSL refuses these properties when the
        // client is created (before any broker is asked).
        let mut k = KafkaConfig::new("127.0.0.1:1", "t", 1);
        for (key, value) in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "points-ledger"),
            ("sasl.password", "secret"),
        ] {
            k.properties.push((key.into(), value.into()));
        }
        let producer: Result<rdkafka::producer::BaseProducer, _> = k.producer().create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn a_records_bound_follows_message_max_bytes() {
        let mut k = KafkaConfig::new("127.0.0.1:1", "t", 1);
        assert_eq!(k.record_bytes_max(), MESSAGE_BYTES_DEFAULT - MESSAGE_OVERHEAD_BYTES);
        k.properties.push(("message.max.bytes".into(), "5000000".into()));
        assert_eq!(k.record_bytes_max(), 5_000_000 - MESSAGE_OVERHEAD_BYTES);
    }
}
