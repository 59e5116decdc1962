//! The writers: one per partition, each on its own thread, owning that
//! partition's account state.
//!
//! A writer takes the commands queued for its partition as one batch (group
//! commit): it decides each against the state left by the ones before it,
//! appends all accepted records in one durable append, answers everyone, then
//! commits its state checkpoint before taking the next batch. Nothing is
//! answered before the append is durable; a failed append answers
//! `Unavailable` and leaves no trace.
//!
//! State lives in RocksDB (a checkpoint with the log offset it reflects) plus
//! an in-memory cache. On start a writer folds the log from its checkpoint to
//! the end before it takes any command (until then its partition answers
//! `Unavailable`), so nothing acknowledged is lost and nothing is applied
//! twice.
//!
//! On a shared log (Kafka) ownership is arbitrated by the log itself
//! (DESIGN.md): a writer appends a claim marker with a higher epoch, stamps
//! its records with that epoch, and answers a batch only after reading the
//! partition back past it and finding its records admitted and no newer
//! claim. A writer that sees a newer claim stops writing the partition. After
//! an append whose outcome is unknown (a timeout may still land) the writer
//! re-reads the log and claims a new epoch, so a late landing is void.
//!
//! Time: the writer reads the clock once per batch and never lets it run
//! backwards within a partition. Due lots and reservations are settled by
//! `Tick` commands the writer issues itself from its due index, so expiry is
//! an event in the log like any other.

use std::collections::HashMap;

use crate::FastMap;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::accounts;
use crate::codec;
use crate::domain::{self, Account, AccountKey, Command, CommandBody, Millis, Points, ProgrammeKey, Rejection};
use crate::log::{self as eventlog, EventLog, LogError, LogReader, LogRecord};
use crate::programmes::SharedRegistry;
use crate::record::{partition_for, AccountRecord, Admitted, Balance, Claim, Position, Reply};
use crate::store::{self, Batch, Cf, Cursor, Db};

/// The source of "now" for writers. The domain never reads a clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);

impl ManualClock {
    pub fn new(at: Millis) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(at)))
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Commands decided and appended together at most.
    pub batch_commands_max: usize,
    /// Commands waiting per partition at most; beyond it callers wait.
    pub queue_commands_max: usize,
    /// How often the scheduler looks for due lots and reservations.
    pub tick_interval_ms: u64,
    /// Accounts settled per tick at most (the rest go in the next tick).
    pub tick_accounts_max: usize,
    /// Accounts kept in memory per partition at most (the store has them
    /// all; 200,000 per partition made a 10-minute run with 1M accounts
    /// swing between 1.2 and 3 GiB of RSS).
    pub cache_accounts_max: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_commands_max: 1024,
            queue_commands_max: 8192,
            tick_interval_ms: 1000,
            tick_accounts_max: 512,
            cache_accounts_max: 25_000,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("request id {0} was already used with different content")]
    RequestIdReused(String),
    #[error("{0}")]
    Unavailable(String),
}

type ReplyTx = oneshot::Sender<Result<Reply, WriteError>>;

enum Msg {
    Submit(Box<Command>, ReplyTx),
    /// Settle what is due; the sender, if any, hears when that is done.
    Tick(Option<oneshot::Sender<()>>),
}

/// A partition writer's state, as the API sees it.
const CATCHING_UP: u8 = 0;
const READY: u8 = 1;
const FENCED: u8 = 2;

/// The handle the API submits commands through.
/// Points each programme issued per programme day, across this instance's
/// partitions: every partition's persisted count plus the grants of batches
/// in flight. `programme_daily_issuance_cap` is decided against it, under
/// its lock, so concurrent partitions never grant past the cap together.
/// Exact while one instance owns every partition (the only deployment the
/// log arbitration supports today).
#[derive(Default)]
pub struct Issuance(Mutex<HashMap<(ProgrammeKey, i64), Points>>);

impl Issuance {
    fn add(&self, amounts: &HashMap<(ProgrammeKey, i64), Points>, sign: i64) {
        let mut t = self.0.lock().expect("issuance lock");
        for (k, v) in amounts {
            *t.entry(k.clone()).or_default() += sign * v;
        }
    }

    /// Issued so far on a programme day (all partitions of this instance).
    pub fn today(&self, programme: &ProgrammeKey, day: i64) -> Points {
        self.0.lock().expect("issuance lock").get(&(programme.clone(), day)).copied().unwrap_or(0)
    }
}

/// `issued/<partition BE>/<tenant \0 programme \0><day>`: a partition's
/// persisted issuance per programme day, in the writer's `meta`.
fn issued_key(partition: u32, p: &ProgrammeKey, day: i64) -> Vec<u8> {
    let mut k = issued_prefix(partition);
    k.extend_from_slice(&store::programme_prefix(&p.tenant_id, &p.programme_id));
    k.extend_from_slice(&store::millis_key(day));
    k
}

fn issued_prefix(partition: u32) -> Vec<u8> {
    let mut k = b"issued/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Granted points per (programme, day) in a record's events.
fn earned_in(account: &AccountKey, events: &[domain::Event], into: &mut HashMap<(ProgrammeKey, i64), Points>) {
    for e in events {
        if let domain::Event::PointsEarned { granted, day, .. } = e {
            *into.entry((account.programme(), *day)).or_default() += granted;
        }
    }
}

pub struct Writers {
    senders: Vec<mpsc::Sender<Msg>>,
    threads: Vec<JoinHandle<()>>,
    status: Arc<Vec<AtomicU8>>,
    ready: tokio::sync::watch::Receiver<u32>,
}

impl Writers {
    /// Starts every partition's writer and their scheduler. Each writer first
    /// catches up with the log (and claims its partition on a shared log);
    /// until then its commands are answered `Unavailable`. Must run inside a
    /// tokio runtime (for the ticker).
    pub fn start(
        log: Arc<dyn EventLog>,
        store: Arc<Db>,
        registry: SharedRegistry,
        clock: Arc<dyn Clock>,
        config: WriterConfig,
    ) -> anyhow::Result<Writers> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let status: Arc<Vec<AtomicU8>> = Arc::new((0..log.partitions()).map(|_| AtomicU8::new(CATCHING_UP)).collect());
        let (ready_tx, ready) = tokio::sync::watch::channel(0u32);
        let ready_tx = Arc::new(ready_tx);
        let writer_id: Arc<str> = writer_id().into();
        let issuance = Arc::new(Issuance::default());
        for partition in 0..log.partitions() {
            let prefix = issued_prefix(partition);
            let mut persisted = HashMap::new();
            for (k, v) in store.scan(Cf::Meta, &prefix, &prefix, usize::MAX)? {
                let Some((p, rest)) = parse_programme_prefix(&k[prefix.len()..]) else { continue };
                let value = i64::from_be_bytes(v[..8].try_into().expect("stored issuance"));
                persisted.insert((p, store::millis_from_key(rest)), value);
            }
            issuance.add(&persisted, 1);
            let w = PartitionWriter {
                issuance: issuance.clone(),
                partition,
                log: log.clone(),
                store: store.clone(),
                registry: registry.clone(),
                clock: clock.clone(),
                cache: FastMap::default(),
                last_now: 0,
                config: config.clone(),
                writer_id: writer_id.clone(),
                cursor: store::read_cursor(&store, partition)?,
                reader: None,
                last_claim: None,
                own_claim: None,
                stale: false,
                status: status.clone(),
            };
            let (tx, rx) = mpsc::channel(config.queue_commands_max);
            senders.push(tx);
            let ready_tx = ready_tx.clone();
            threads.push(
                std::thread::Builder::new().name(format!("writer-{partition}")).spawn(move || w.run(rx, &ready_tx))?,
            );
        }
        let weak: Vec<_> = senders.iter().map(|s| s.downgrade()).collect();
        let every = Duration::from_millis(config.tick_interval_ms.max(1));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let mut alive = false;
                for s in &weak {
                    if let Some(s) = s.upgrade() {
                        alive = true;
                        // A full queue is busy enough; the next tick will come.
                        let _ = s.try_send(Msg::Tick(None));
                    }
                }
                if !alive {
                    break;
                }
            }
        });
        Ok(Writers { senders, threads, status, ready })
    }

    /// Waits until every partition's writer has caught up with the log.
    pub async fn ready(&self) {
        let n = self.partitions();
        let mut rx = self.ready.clone();
        let _ = rx.wait_for(|ready| *ready >= n).await;
    }

    /// Whether every partition's writer has caught up and owns its partition.
    pub fn all_ready(&self) -> bool {
        self.status.iter().all(|s| s.load(Ordering::Acquire) == READY)
    }

    pub fn partitions(&self) -> u32 {
        self.senders.len() as u32
    }

    pub fn partition_of(&self, account: &AccountKey) -> u32 {
        partition_for(account, self.partitions())
    }

    /// Submits a command to its partition's writer and waits for the answer.
    pub async fn submit(&self, command: Command) -> Result<Reply, WriteError> {
        Self::answer(self.send(command).await).await
    }

    /// Submits commands in order (each partition's writer receives its
    /// share in this order, so commands on one account are decided as
    /// listed) and then waits for every answer.
    pub async fn submit_all(&self, commands: Vec<Command>) -> Vec<Result<Reply, WriteError>> {
        let mut pending = Vec::with_capacity(commands.len());
        for c in commands {
            pending.push(self.send(c).await);
        }
        let mut answers = Vec::with_capacity(pending.len());
        for p in pending {
            answers.push(Self::answer(p).await);
        }
        answers
    }

    async fn send(&self, command: Command) -> Result<oneshot::Receiver<Result<Reply, WriteError>>, WriteError> {
        let p = self.partition_of(&command.account) as usize;
        match self.status[p].load(Ordering::Acquire) {
            READY => {}
            CATCHING_UP => {
                return Err(WriteError::Unavailable(format!(
                    "partition {p} is catching up with the log; retry shortly"
                )))
            }
            _ => {
                return Err(WriteError::Unavailable(format!(
                    "partition {p} was taken over by a newer writer; this instance no longer writes it"
                )))
            }
        }
        let (tx, rx) = oneshot::channel();
        self.senders[p]
            .send(Msg::Submit(Box::new(command), tx))
            .await
            .map_err(|_| WriteError::Unavailable("the partition's writer has stopped".into()))?;
        Ok(rx)
    }

    async fn answer(
        sent: Result<oneshot::Receiver<Result<Reply, WriteError>>, WriteError>,
    ) -> Result<Reply, WriteError> {
        sent?.await.map_err(|_| WriteError::Unavailable("the partition's writer stopped before answering".into()))?
    }

    /// Asks every writer to settle what is due now and waits until they have
    /// (tests and tools; in service the ticker does it).
    pub async fn tick(&self) {
        let mut done = Vec::new();
        for s in &self.senders {
            let (tx, rx) = oneshot::channel();
            if s.send(Msg::Tick(Some(tx))).await.is_ok() {
                done.push(rx);
            }
        }
        for rx in done {
            let _ = rx.await;
        }
    }

    /// Stops taking commands, lets each writer finish what is queued, and
    /// waits for the threads.
    pub fn shutdown(self) {
        drop(self.senders);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct PartitionWriter {
    partition: u32,
    issuance: Arc<Issuance>,
    log: Arc<dyn EventLog>,
    store: Arc<Db>,
    registry: SharedRegistry,
    clock: Arc<dyn Clock>,
    /// Accounts as of the last committed batch (a cache of the store), each
    /// with the instant its due-index row stands at.
    cache: FastMap<AccountKey, (Account, Option<Millis>, accounts::Changed)>,
    /// The latest `now` used, so time never runs backwards in a partition.
    last_now: Millis,
    config: WriterConfig,
    /// Names this process in its claim markers.
    writer_id: Arc<str>,
    /// The next offset the state reflects, and the log's arbiter there.
    cursor: Cursor,
    /// A reader kept at `cursor.next` between batches (shared logs).
    reader: Option<Box<dyn LogReader>>,
    /// The offset of the latest claim admitted up to `cursor`.
    last_claim: Option<u64>,
    /// Our own claim's offset, once we own the partition (shared logs).
    own_claim: Option<u64>,
    /// True after an append whose outcome is unknown: the state may lack
    /// records the log has; re-read (and re-claim) before deciding again.
    stale: bool,
    status: Arc<Vec<AtomicU8>>,
}

/// Splits `tenant \0 programme \0` off the front of a key.
fn parse_programme_prefix(b: &[u8]) -> Option<(ProgrammeKey, &[u8])> {
    let i = b.iter().position(|&x| x == 0)?;
    let j = i + 1 + b[i + 1..].iter().position(|&x| x == 0)?;
    let tenant = String::from_utf8(b[..i].to_vec()).ok()?;
    let programme = String::from_utf8(b[i + 1..j].to_vec()).ok()?;
    Some((ProgrammeKey { tenant_id: tenant, programme_id: programme }, &b[j + 1..]))
}

/// `host:pid:start-ms`, to tell claim markers apart for operators.
fn writer_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!(
        "{}:{}:{}",
        if host.is_empty() { "localhost" } else { &host },
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    )
}

/// How a shared-log writer's read-back of its batch ended.
enum ReadBack {
    /// Every record of the batch is admitted; nothing else counts in between.
    Confirmed,
    /// A newer claim took the partition.
    Fenced(u64),
    /// Something unexpected (e.g. a record of an earlier, failed append).
    Unclear(String),
}

/// State changed by one batch, not yet committed.
#[derive(Default)]
struct Work {
    /// Accounts the batch has looked at.
    accounts: FastMap<AccountKey, Touched>,
    /// (tenant, request id, fingerprint, reply) for the idempotency records.
    replies: Vec<(String, String, u64, Reply)>,
    /// Due-index rows a tick took up: deleted at commit, and each account's
    /// current due instant put back (a row can go stale when the rules that
    /// set it change, e.g. the level window).
    ticked: Vec<(Vec<u8>, AccountKey)>,
    /// Points granted by records read back from the log (added to the
    /// shared issuance at commit).
    issued_folded: HashMap<(ProgrammeKey, i64), Points>,
    /// Points granted by this batch's decisions (already in the shared
    /// issuance; taken out again if the batch fails).
    issued_reserved: HashMap<(ProgrammeKey, i64), Points>,
}

/// An account as a batch sees it.
struct Touched {
    /// When something in it fell due before the batch (for the due index).
    due_before: Option<Millis>,
    /// The same after the batch (set at commit).
    due_after: Option<Millis>,
    account: Account,
    /// What events changed (only that is written back).
    changed: accounts::Changed,
}

impl PartitionWriter {
    /// An account as of the last committed batch, taken out of the cache
    /// (a batch that commits puts it back; one that fails leaves the store's).
    /// Also returns when something in it falls due (as its due-index row says).
    fn load(&mut self, key: &AccountKey) -> Result<(Account, accounts::Changed, Option<Millis>), store::StoreError> {
        if let Some((a, due, stored)) = self.cache.remove(key) {
            return Ok((a, stored, due));
        }
        let (account, changed) = accounts::load(&self.store, Cf::Accounts, key)?;
        let due = domain::due_at(&account, self.programme(key).as_deref());
        Ok((account, changed, due))
    }

    fn account<'w>(&mut self, work: &'w mut Work, key: &AccountKey) -> Result<&'w mut Touched, store::StoreError> {
        if !work.accounts.contains_key(key) {
            let (account, changed, due_before) = self.load(key)?;
            work.accounts.insert(key.clone(), Touched { due_before, due_after: due_before, account, changed });
        }
        Ok(work.accounts.get_mut(key).expect("just inserted"))
    }

    /// Folds accepted events into a touched account; returns its balance after.
    fn fold(touched: &mut Touched, events: &[domain::Event]) -> Balance {
        for e in events {
            touched.account.apply(e);
            touched.changed.note(e);
        }
        Balance::of(&touched.account)
    }

    /// A reader at `cursor.next`: the kept one if it is there, else a new one.
    fn take_reader(&mut self) -> Result<Box<dyn LogReader>, LogError> {
        match self.reader.take() {
            Some(r) if r.position() == self.cursor.next => Ok(r),
            _ => self.log.reader(self.partition, self.cursor.next),
        }
    }

    /// Folds the log from the cursor up to `end` (exclusive), committing as it
    /// goes. Returns the records folded.
    fn catch_up(&mut self, end: u64) -> anyhow::Result<u64> {
        let mut reader = self.take_reader()?;
        let mut folded = 0;
        loop {
            let entries = eventlog::read_towards(reader.as_mut(), end, self.config.batch_commands_max)?;
            if entries.is_empty() {
                break;
            }
            let mut work = Work::default();
            for e in &entries {
                match self.cursor.arbiter.admit_bytes(&e.payload)? {
                    Admitted::Record(record) => {
                        let balance = Self::fold(self.account(&mut work, &record.account)?, &record.events);
                        earned_in(&record.account, &record.events, &mut work.issued_folded);
                        self.last_now = self.last_now.max(record.at);
                        if !record.system {
                            let position = Position { partition: self.partition, offset: e.offset };
                            let reply = Reply::for_record(&record, position, balance);
                            work.replies.push((
                                record.account.tenant_id.clone(),
                                record.request_id.clone(),
                                record.fingerprint,
                                reply,
                            ));
                        }
                        folded += 1;
                    }
                    Admitted::Claim(_) => self.last_claim = Some(e.offset),
                    Admitted::Void => {}
                }
            }
            self.cursor.next = reader.position();
            self.commit(work)?;
        }
        self.reader = Some(reader);
        Ok(folded)
    }

    /// Catches up with the log's end and, on a shared log, claims the
    /// partition. Ok(false) when another writer has taken it meanwhile.
    fn start_up(&mut self) -> anyhow::Result<bool> {
        let end = self.log.end_offset(self.partition)?;
        let folded = self.catch_up(end)?;
        tracing::info!(partition = self.partition, folded, next = self.cursor.next, "writer caught up with the log");
        if self.log.shared() {
            return self.claim();
        }
        Ok(true)
    }

    /// Appends a claim marker with the next epoch and reads back past it.
    /// Ok(true) when it took the partition.
    fn claim(&mut self) -> anyhow::Result<bool> {
        for _attempt in 0..3 {
            let end = self.log.end_offset(self.partition)?;
            self.catch_up(end)?;
            if self.own_claim.is_some() && self.last_claim != self.own_claim {
                // Someone claimed after us: they own it now; do not fight back.
                return Ok(false);
            }
            let claim = Claim {
                epoch: self.cursor.arbiter.epoch + 1,
                writer: self.writer_id.to_string(),
                at: self.clock.now().max(self.last_now),
            };
            let offsets =
                self.log.append(self.partition, &[LogRecord::new(b"claim".to_vec(), codec::encode_claim(&claim))])?;
            self.catch_up(offsets[0] + 1)?;
            if self.last_claim == Some(offsets[0]) {
                self.own_claim = self.last_claim;
                tracing::info!(
                    partition = self.partition,
                    epoch = claim.epoch,
                    offset = offsets[0],
                    "claimed partition"
                );
                return Ok(true);
            }
            // A claim with the same epoch landed first: try the next epoch.
        }
        Ok(false)
    }

    /// Reads the partition back past a just-appended batch (shared logs).
    fn read_back(&mut self, offsets: &[u64]) -> Result<ReadBack, LogError> {
        let end = offsets.last().expect("a batch") + 1;
        let mut reader = self.take_reader()?;
        let mut arbiter = self.cursor.arbiter;
        loop {
            let entries = eventlog::read_towards(reader.as_mut(), end, self.config.batch_commands_max.max(64))?;
            if entries.is_empty() {
                break;
            }
            for e in &entries {
                let ours = offsets.binary_search(&e.offset).is_ok();
                let admitted = arbiter.admit_bytes(&e.payload).map_err(|c| LogError::Corrupt(c.to_string()))?;
                match (ours, admitted) {
                    (true, Admitted::Record(_)) | (false, Admitted::Void) => {}
                    (_, Admitted::Claim(c)) => return Ok(ReadBack::Fenced(c.epoch)),
                    (true, _) => return Ok(ReadBack::Unclear(format!("record at offset {} is void", e.offset))),
                    (false, Admitted::Record(_)) => {
                        return Ok(ReadBack::Unclear(format!("unexpected record at offset {}", e.offset)))
                    }
                }
            }
        }
        self.reader = Some(reader);
        self.cursor.next = end;
        Ok(ReadBack::Confirmed)
    }

    /// Before deciding after an unknown outcome: re-read the log, and on a
    /// shared log take a new epoch so anything of ours still in flight is void.
    fn resync(&mut self) -> anyhow::Result<()> {
        self.reader = None;
        if self.log.shared() {
            if !self.claim()? {
                self.fence();
                anyhow::bail!("partition {} was taken over by a newer writer", self.partition);
            }
        } else {
            let end = self.log.end_offset(self.partition)?;
            self.catch_up(end)?;
        }
        self.stale = false;
        Ok(())
    }

    fn fence(&mut self) {
        tracing::warn!(
            partition = self.partition,
            "a newer writer claimed the partition; this writer stops writing it"
        );
        self.status[self.partition as usize].store(FENCED, Ordering::Release);
    }

    /// Writes a batch's state with the cursor it reflects, atomically.
    fn commit(&mut self, mut work: Work) -> Result<(), store::StoreError> {
        let mut batch = Batch::default();
        for (key, t) in work.accounts.iter_mut().filter(|(_, t)| !t.changed.is_empty()) {
            for (k, v) in accounts::rows(key, &t.account, &t.changed) {
                batch.put_or_delete(Cf::Accounts, k, v);
            }
            t.due_after = domain::due_at(&t.account, self.programme(key).as_deref());
            if t.due_before != t.due_after {
                if let Some(at) = t.due_before {
                    batch.delete(Cf::Due, &store::due_key(self.partition, at, key));
                }
                if let Some(at) = t.due_after {
                    batch.put(Cf::Due, &store::due_key(self.partition, at, key), &[]);
                }
            }
        }
        for (row, key) in &work.ticked {
            batch.delete(Cf::Due, row);
            if let Some(t) = work.accounts.get_mut(key) {
                if t.changed.is_empty() {
                    // Nothing fell due after all (the rules behind the row changed).
                    t.due_after = domain::due_at(&t.account, self.programme(key).as_deref());
                }
                if let Some(at) = t.due_after {
                    batch.put(Cf::Due, &store::due_key(self.partition, at, key), &[]);
                }
            }
        }
        let mut issued = work.issued_reserved.clone();
        for (k, v) in &work.issued_folded {
            *issued.entry(k.clone()).or_default() += v;
        }
        for ((p, day), v) in &issued {
            let key = issued_key(self.partition, p, *day);
            let before = match self.store.get(Cf::Meta, &key)? {
                Some(b) => i64::from_be_bytes(b[..8].try_into().expect("stored issuance")),
                None => 0,
            };
            batch.put(Cf::Meta, &key, &(before + v).to_be_bytes());
        }
        for (tenant, request_id, fingerprint, reply) in &work.replies {
            batch.put(
                Cf::Requests,
                &store::request_key(tenant, request_id),
                &codec::encode_stored_reply(*fingerprint, reply),
            );
        }
        store::put_cursor(&mut batch, self.partition, self.cursor);
        self.store.write(batch)?;
        self.issuance.add(&work.issued_folded, 1);
        if self.cache.len() + work.accounts.len() > self.config.cache_accounts_max {
            // Crude but bounded: the store has everything.
            self.cache.clear();
        }
        for (key, t) in work.accounts {
            let stored = t.changed.written(&t.account);
            self.cache.insert(key, (t.account, t.due_after, stored));
        }
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>, ready: &tokio::sync::watch::Sender<u32>) {
        loop {
            match self.start_up() {
                Ok(true) => break,
                Ok(false) => {
                    self.fence();
                    break;
                }
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "writer cannot catch up with the log yet; retrying");
                    if rx.is_closed() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        if self.status[self.partition as usize].load(Ordering::Acquire) == CATCHING_UP {
            self.status[self.partition as usize].store(READY, Ordering::Release);
        }
        ready.send_modify(|n| *n += 1);
        while let Some(first) = rx.blocking_recv() {
            let mut msgs = vec![first];
            while msgs.len() < self.config.batch_commands_max {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.process(msgs) {
                // The log holds what was answered; a restart rebuilds the rest.
                tracing::error!(partition = self.partition, error = %e, "writer state could not be committed; writer stops");
                self.status[self.partition as usize].store(FENCED, Ordering::Release);
                return;
            }
        }
        tracing::info!(partition = self.partition, "writer stopped");
    }

    /// Answers every caller in `msgs` with `Unavailable(message)`.
    fn refuse(msgs: Vec<Msg>, message: &str) {
        for m in msgs {
            match m {
                Msg::Submit(_, tx) => {
                    let _ = tx.send(Err(WriteError::Unavailable(message.to_string())));
                }
                Msg::Tick(done) => drop(done),
            }
        }
    }

    /// Accounts with something due at `now`, from the due index.
    /// Due-index rows at or before `now` (at most `tick_accounts_max`), with
    /// their accounts.
    fn due_accounts(&self, now: Millis) -> Result<Vec<(Vec<u8>, AccountKey)>, store::StoreError> {
        let prefix = self.partition.to_be_bytes();
        let rows = self.store.scan(Cf::Due, &prefix, &prefix, self.config.tick_accounts_max)?;
        Ok(rows
            .into_iter()
            .take_while(|(k, _)| store::millis_from_key(&k[4..12]) <= now)
            .filter_map(|(k, _)| store::parse_account_key(&k[12..]).map(|(a, _)| (k.clone(), a)))
            .collect())
    }

    fn programme(&self, key: &AccountKey) -> Option<Arc<domain::Programme>> {
        self.registry.read().expect("registry lock").current(&key.programme())
    }

    fn process(&mut self, msgs: Vec<Msg>) -> anyhow::Result<()> {
        if self.status[self.partition as usize].load(Ordering::Acquire) == FENCED {
            Self::refuse(
                msgs,
                &format!(
                    "partition {} was taken over by a newer writer; this instance no longer writes it",
                    self.partition
                ),
            );
            return Ok(());
        }
        if self.stale {
            if let Err(e) = self.resync() {
                tracing::warn!(partition = self.partition, error = %e, "writer cannot re-read the log yet");
                Self::refuse(msgs, &format!("log unavailable: {e}"));
                return Ok(());
            }
        }
        let now = self.clock.now().max(self.last_now);
        self.last_now = now;
        let mut commands: Vec<(Command, Option<ReplyTx>)> = Vec::with_capacity(msgs.len());
        let mut ticked = false;
        // Tick senders hear back once the batch is appended (or failed).
        let mut tick_waiters = Vec::new();
        let mut ticked_rows = Vec::new();
        for m in msgs {
            match m {
                Msg::Submit(c, tx) => commands.push((*c, Some(tx))),
                Msg::Tick(done) => {
                    tick_waiters.extend(done);
                    if !ticked {
                        ticked = true;
                        for (row, account) in self.due_accounts(now)? {
                            ticked_rows.push((row, account.clone()));
                            let cmd = Command {
                                request_id: String::new(),
                                account,
                                body: CommandBody::Tick,
                                context: Default::default(),
                            };
                            commands.push((cmd, None));
                        }
                    }
                }
            }
        }

        let mut work = Work { ticked: ticked_rows, ..Work::default() };
        let mut records: Vec<(AccountRecord, Balance)> = Vec::new();
        // Callers waiting for record i; `true` marks an in-batch retry.
        let mut waiting: Vec<(ReplyTx, usize, bool)> = Vec::new();
        let mut in_batch: FastMap<(String, String), (u64, usize)> = FastMap::default();
        for (cmd, tx) in commands {
            let fingerprint = domain::fingerprint(&cmd);
            let key = (cmd.account.tenant_id.clone(), cmd.request_id.clone());
            // Callers' commands are idempotent; the writer's own have no id.
            let tx = match tx {
                None => None,
                Some(tx) => {
                    if let Some(&(fp, i)) = in_batch.get(&key) {
                        if fp == fingerprint {
                            waiting.push((tx, i, true));
                        } else {
                            let _ = tx.send(Err(WriteError::RequestIdReused(cmd.request_id)));
                        }
                        continue;
                    }
                    if let Some(bytes) = self.store.get(Cf::Requests, &store::request_key(&key.0, &key.1))? {
                        let (fp, mut reply) = codec::decode_stored_reply(&bytes)?;
                        reply.replayed = true;
                        let _ = tx.send(if fp == fingerprint {
                            Ok(reply)
                        } else {
                            Err(WriteError::RequestIdReused(cmd.request_id))
                        });
                        continue;
                    }
                    Some(tx)
                }
            };
            let programme = self.registry.read().expect("registry lock").current(&cmd.account.programme());
            let touched = self.account(&mut work, &cmd.account)?;
            let day = programme.as_deref().map(|p| domain::calendar::programme_day(p.time_zone, now));
            // Under a programme-wide cap, earns decide and count under the
            // shared issuance's lock, so two partitions cannot both take the
            // programme's last room; other earns only count after deciding.
            let capped = matches!(cmd.body, CommandBody::Earn { .. })
                && programme.as_deref().is_some_and(|p| p.programme_daily_issuance_cap > 0);
            let mut held = capped.then(|| self.issuance.0.lock().expect("issuance lock"));
            let limits = domain::Limits {
                programme_issued_today: match (&held, day) {
                    (Some(t), Some(day)) => t.get(&(cmd.account.programme(), day)).copied().unwrap_or(0),
                    _ => 0,
                },
            };
            let decided = domain::decide_with(programme.as_deref(), &touched.account, &cmd, now, &limits);
            let mut granted = HashMap::new();
            if let Ok(events) = &decided {
                earned_in(&cmd.account, events, &mut granted);
            }
            if !granted.is_empty() {
                let mut t = match held.take() {
                    Some(t) => t,
                    None => self.issuance.0.lock().expect("issuance lock"),
                };
                for (k, v) in &granted {
                    *t.entry(k.clone()).or_default() += v;
                }
            }
            drop(held);
            let events = match decided {
                Ok(events) => events,
                Err(rejection) => {
                    if let Some(tx) = tx {
                        let _ = tx.send(Err(WriteError::Rejected(rejection)));
                    }
                    continue;
                }
            };
            if tx.is_none() && events.is_empty() {
                continue; // a tick with nothing due
            }
            let balance = Self::fold(touched, &events);
            for (k, v) in granted {
                *work.issued_reserved.entry(k).or_default() += v;
            }
            if let Some(tx) = tx {
                in_batch.insert(key, (fingerprint, records.len()));
                waiting.push((tx, records.len(), false));
            }
            records
                .push((self.record(cmd, programme.map(|p| p.version).unwrap_or(0), fingerprint, now, events), balance));
        }
        if records.is_empty() {
            return Ok(());
        }
        let encoded: Vec<LogRecord> = records
            .iter()
            .map(|(r, _)| LogRecord::new(r.account.to_string().into_bytes(), codec::encode_account_record(r)))
            .collect();
        let appended = self.log.append(self.partition, &encoded).map_err(|e| match e {
            LogError::Unavailable(m) => format!("log unavailable: {m}"),
            other => format!("log append failed: {other}"),
        });
        let verdict = match (&appended, self.log.shared()) {
            (Err(m), _) => Err(m.clone()),
            (Ok(_), false) => Ok(()),
            (Ok(offsets), true) => match self.read_back(offsets) {
                Ok(ReadBack::Confirmed) => Ok(()),
                Ok(ReadBack::Fenced(epoch)) => {
                    self.fence();
                    Err(format!(
                        "partition {} was taken over by a newer writer (epoch {epoch}); this batch is void",
                        self.partition
                    ))
                }
                Ok(ReadBack::Unclear(why)) => Err(format!("log read-back did not confirm the batch: {why}")),
                Err(e) => Err(format!("log read-back failed: {e}")),
            },
        };
        if let Err(message) = verdict {
            tracing::warn!(partition = self.partition, error = %message, "batch answered UNAVAILABLE");
            // What landed is in the log; the next batch re-reads it first
            // (and counts its grants then).
            self.issuance.add(&work.issued_reserved, -1);
            self.stale = true;
            self.reader = None;
            for (tx, _, _) in waiting {
                let _ = tx.send(Err(WriteError::Unavailable(message.clone())));
            }
            return Ok(());
        }
        let offsets = appended.expect("checked");
        if !self.log.shared() {
            self.cursor.next = offsets.last().expect("a batch") + 1;
        }
        let replies: Vec<Reply> = records
            .iter()
            .zip(&offsets)
            .map(|((r, b), &offset)| Reply::for_record(r, Position { partition: self.partition, offset }, *b))
            .collect();
        for ((r, _), reply) in records.iter().zip(&replies) {
            if !r.system {
                work.replies.push((r.account.tenant_id.clone(), r.request_id.clone(), r.fingerprint, reply.clone()));
            }
        }
        // The batch is durable in the log: answer before writing the state
        // the log already determines (a retry is decided in a later batch,
        // after this commit; if the commit fails, the writer stops and a
        // restart catches up from the log).
        for (tx, i, replayed) in waiting {
            let mut reply = replies[i].clone();
            reply.replayed = replayed;
            let _ = tx.send(Ok(reply));
        }
        self.commit(work).map_err(Into::into)
    }

    fn record(
        &self,
        cmd: Command,
        programme_version: u64,
        fingerprint: u64,
        now: Millis,
        events: Vec<domain::Event>,
    ) -> AccountRecord {
        AccountRecord {
            epoch: self.cursor.arbiter.epoch,
            system: cmd.body.is_system(),
            request_id: cmd.request_id,
            account: cmd.account,
            programme_version,
            at: now,
            fingerprint,
            events,
            context: cmd.context,
        }
    }
}
