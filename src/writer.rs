//! The writers: one per partition, each on its own thread, owning that
//! partition's account state.
//!
//! A writer takes the commands queued for its partition as one batch (group
//! commit): it decides each against the state left by the ones before it,
//! appends all accepted records in one durable append, then commits its state
//! checkpoint and answers everyone. Nothing is answered before the append is
//! durable; a failed append answers `Unavailable` and leaves no trace.
//!
//! State lives in RocksDB (a checkpoint with the log offset it reflects) plus
//! an in-memory cache. On start a writer folds the log from its checkpoint to
//! the end before it takes any command, so nothing acknowledged is lost and
//! nothing is applied twice.
//!
//! Time: the writer reads the clock once per batch and never lets it run
//! backwards within a partition. Due lots and reservations are settled by
//! `Tick` commands the writer issues itself from its due index, so expiry is
//! an event in the log like any other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::domain::{self, Account, AccountKey, Command, CommandBody, Millis, Rejection};
use crate::log::{EventLog, LogError};
use crate::programmes::SharedRegistry;
use crate::record::{partition_for, AccountRecord, Balance, Position, Reply};
use crate::store::{self, Batch, Cf, Db};

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
    /// Accounts kept in memory per partition at most.
    pub cache_accounts_max: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_commands_max: 1024,
            queue_commands_max: 8192,
            tick_interval_ms: 1000,
            tick_accounts_max: 512,
            cache_accounts_max: 200_000,
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

/// The handle the API submits commands through.
pub struct Writers {
    senders: Vec<mpsc::Sender<Msg>>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Recovers every partition's writer from the log, then starts them and
    /// their scheduler. Must run inside a tokio runtime (for the ticker).
    pub fn start(
        log: Arc<dyn EventLog>,
        store: Arc<Db>,
        registry: SharedRegistry,
        clock: Arc<dyn Clock>,
        config: WriterConfig,
    ) -> anyhow::Result<Writers> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for partition in 0..log.partitions() {
            let mut w = PartitionWriter {
                partition,
                log: log.clone(),
                store: store.clone(),
                registry: registry.clone(),
                clock: clock.clone(),
                cache: HashMap::new(),
                last_now: 0,
                config: config.clone(),
            };
            let recovered = w.recover()?;
            tracing::info!(partition, recovered, "writer caught up with the log");
            let (tx, rx) = mpsc::channel(config.queue_commands_max);
            senders.push(tx);
            threads.push(std::thread::Builder::new().name(format!("writer-{partition}")).spawn(move || w.run(rx))?);
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
        Ok(Writers { senders, threads })
    }

    pub fn partitions(&self) -> u32 {
        self.senders.len() as u32
    }

    pub fn partition_of(&self, account: &AccountKey) -> u32 {
        partition_for(account, self.partitions())
    }

    /// Submits a command to its partition's writer and waits for the answer.
    pub async fn submit(&self, command: Command) -> Result<Reply, WriteError> {
        let p = self.partition_of(&command.account) as usize;
        let (tx, rx) = oneshot::channel();
        self.senders[p]
            .send(Msg::Submit(Box::new(command), tx))
            .await
            .map_err(|_| WriteError::Unavailable("the partition's writer has stopped".into()))?;
        rx.await.map_err(|_| WriteError::Unavailable("the partition's writer stopped before answering".into()))?
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
    log: Arc<dyn EventLog>,
    store: Arc<Db>,
    registry: SharedRegistry,
    clock: Arc<dyn Clock>,
    /// Accounts as of the last committed batch (a cache of the store).
    cache: HashMap<AccountKey, Account>,
    /// The latest `now` used, so time never runs backwards in a partition.
    last_now: Millis,
    config: WriterConfig,
}

/// State changed by one batch, not yet committed.
#[derive(Default)]
struct Work {
    /// Accounts the batch has looked at.
    accounts: HashMap<AccountKey, Touched>,
    /// (tenant, request id, fingerprint, reply) for the idempotency records.
    replies: Vec<(String, String, u64, Reply)>,
}

/// An account as a batch sees it.
struct Touched {
    /// When something in it fell due before the batch (for the due index).
    due_before: Option<Millis>,
    account: Account,
    /// Whether events were applied (only those are written back).
    changed: bool,
}

impl PartitionWriter {
    fn load(&self, key: &AccountKey) -> Result<Account, store::StoreError> {
        if let Some(a) = self.cache.get(key) {
            return Ok(a.clone());
        }
        match self.store.get(Cf::Accounts, &store::account_key(key))? {
            Some(bytes) => Ok(codec::decode_account(&bytes)?),
            None => Ok(Account::default()),
        }
    }

    fn account<'w>(&self, work: &'w mut Work, key: &AccountKey) -> Result<&'w mut Touched, store::StoreError> {
        if !work.accounts.contains_key(key) {
            let account = self.load(key)?;
            work.accounts
                .insert(key.clone(), Touched { due_before: domain::due_at(&account), account, changed: false });
        }
        Ok(work.accounts.get_mut(key).expect("just inserted"))
    }

    /// Folds accepted events into a touched account; returns its balance after.
    fn fold(touched: &mut Touched, events: &[domain::Event]) -> Balance {
        events.iter().for_each(|e| touched.account.apply(e));
        touched.changed |= !events.is_empty();
        Balance::of(&touched.account)
    }

    /// Folds the log from the checkpoint to its end. Returns records folded.
    fn recover(&mut self) -> anyhow::Result<u64> {
        let from = store::read_position(&self.store, self.partition)?;
        let mut reader = self.log.reader(self.partition, from)?;
        let mut folded = 0;
        loop {
            let entries = reader.next_batch(self.config.batch_commands_max, Duration::ZERO)?;
            if entries.is_empty() {
                return Ok(folded);
            }
            let mut work = Work::default();
            for e in &entries {
                let record = codec::decode_account_record(&e.payload)?;
                let balance = Self::fold(self.account(&mut work, &record.account)?, &record.events);
                self.last_now = self.last_now.max(record.at);
                if !record.system {
                    let reply =
                        Reply::for_record(&record, Position { partition: self.partition, offset: e.offset }, balance);
                    work.replies.push((
                        record.account.tenant_id.clone(),
                        record.request_id.clone(),
                        record.fingerprint,
                        reply,
                    ));
                }
                folded += 1;
            }
            self.commit(work, reader.position())?;
        }
    }

    /// Writes a batch's state with the log offset it reflects, atomically.
    fn commit(&mut self, work: Work, next_offset: u64) -> Result<(), store::StoreError> {
        let mut batch = Batch::default();
        for (key, t) in work.accounts.iter().filter(|(_, t)| t.changed) {
            let (due_before, account) = (&t.due_before, &t.account);
            batch.put(Cf::Accounts, &store::account_key(key), &codec::encode_account(account));
            let due_after = domain::due_at(account);
            if due_before != &due_after {
                if let Some(at) = due_before {
                    batch.delete(Cf::Due, &store::due_key(self.partition, *at, key));
                }
                if let Some(at) = due_after {
                    batch.put(Cf::Due, &store::due_key(self.partition, at, key), &[]);
                }
            }
        }
        for (tenant, request_id, fingerprint, reply) in &work.replies {
            batch.put(
                Cf::Requests,
                &store::request_key(tenant, request_id),
                &codec::encode_stored_reply(*fingerprint, reply),
            );
        }
        store::put_position(&mut batch, self.partition, next_offset);
        self.store.write(batch)?;
        if self.cache.len() + work.accounts.len() > self.config.cache_accounts_max {
            // Crude but bounded: the store has everything.
            self.cache.clear();
        }
        for (key, t) in work.accounts {
            if t.changed {
                self.cache.insert(key, t.account);
            }
        }
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
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
                return;
            }
        }
        tracing::info!(partition = self.partition, "writer stopped");
    }

    /// Accounts with something due at `now`, from the due index.
    fn due_accounts(&self, now: Millis) -> Result<Vec<AccountKey>, store::StoreError> {
        let prefix = self.partition.to_be_bytes();
        let rows = self.store.scan(Cf::Due, &prefix, &prefix, self.config.tick_accounts_max)?;
        Ok(rows
            .into_iter()
            .take_while(|(k, _)| store::millis_from_key(&k[4..12]) <= now)
            .filter_map(|(k, _)| store::parse_account_key(&k[12..]).map(|(a, _)| a))
            .collect())
    }

    fn process(&mut self, msgs: Vec<Msg>) -> anyhow::Result<()> {
        let now = self.clock.now().max(self.last_now);
        self.last_now = now;
        let mut commands: Vec<(Command, Option<ReplyTx>)> = Vec::with_capacity(msgs.len());
        let mut ticked = false;
        // Tick senders hear back once the batch is appended (or failed).
        let mut tick_waiters = Vec::new();
        for m in msgs {
            match m {
                Msg::Submit(c, tx) => commands.push((*c, Some(tx))),
                Msg::Tick(done) => {
                    tick_waiters.extend(done);
                    if !ticked {
                        ticked = true;
                        for account in self.due_accounts(now)? {
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

        let mut work = Work::default();
        let mut records: Vec<(AccountRecord, Balance)> = Vec::new();
        // Callers waiting for record i; `true` marks an in-batch retry.
        let mut waiting: Vec<(ReplyTx, usize, bool)> = Vec::new();
        let mut in_batch: HashMap<(String, String), (u64, usize)> = HashMap::new();
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
            let events = match domain::decide(programme.as_deref(), &touched.account, &cmd, now) {
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
        let encoded: Vec<Vec<u8>> = records.iter().map(|(r, _)| codec::encode_account_record(r)).collect();
        let first = match self.log.append(self.partition, &encoded) {
            Ok(first) => first,
            Err(e) => {
                let message = match &e {
                    LogError::Unavailable(m) => format!("log unavailable: {m}"),
                    other => format!("log append failed: {other}"),
                };
                tracing::warn!(partition = self.partition, error = %e, "append failed; batch answered UNAVAILABLE");
                for (tx, _, _) in waiting {
                    let _ = tx.send(Err(WriteError::Unavailable(message.clone())));
                }
                return Ok(());
            }
        };
        let replies: Vec<Reply> = records
            .iter()
            .enumerate()
            .map(|(i, (r, b))| {
                Reply::for_record(r, Position { partition: self.partition, offset: first + i as u64 }, *b)
            })
            .collect();
        for ((r, _), reply) in records.iter().zip(&replies) {
            if !r.system {
                work.replies.push((r.account.tenant_id.clone(), r.request_id.clone(), r.fingerprint, reply.clone()));
            }
        }
        let committed = self.commit(work, first + records.len() as u64);
        for (tx, i, replayed) in waiting {
            let mut reply = replies[i].clone();
            reply.replayed = replayed;
            let _ = tx.send(Ok(reply));
        }
        committed.map_err(Into::into)
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
            epoch: 0,
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
