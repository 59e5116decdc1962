//! The write side: one writer per partition, each on its own thread, owning
//! that partition's account state, and the handle the API submits through.
//!
//! - `mode` and `run`: a writer's modes (catching up, writing, following,
//!   releasing, fenced, stopped) and the moves between them;
//! - `partition`: what a writer holds;
//! - `batch`, `decide`, `append`, `commit`: one batch in named phases
//!   (gather, decide, append and confirm, answer, commit);
//! - `cache`: the accounts kept between batches (decoded, and behind them as
//!   one row each);
//! - `follow`: how a writer follows its partition of the log (catching up,
//!   claiming it on a shared log, reading each batch back);
//! - `ownership`: which partitions this instance wants, and each writer's mode;
//! - `scheduler`: the ticker that makes expiry and timeouts events;
//! - `issuance` and `shares`: the programme-wide daily cap across partitions;
//! - `reevaluate`: the walk of a programme's accounts after its levels change;
//! - `rebuild`: a writer without state folding a long log behind, as a
//!   rebuild does.
//!
//! A writer never answers before its batch is durable in the log (and, on a
//! shared log, read back and counted); a failed append answers
//! `Unavailable` and leaves no trace in its state.

mod append;
mod batch;
mod cache;
mod commit;
mod decide;
mod follow;
pub mod issuance;
pub mod mode;
pub mod ownership;
mod partition;
mod rebuild;
mod reevaluate;
mod run;
mod scheduler;
mod shares;

use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::programmes::Programmes;
use issuance::Issuance;
pub use mode::Mode;
pub use ownership::Ownership;

use crate::domain::{AccountKey, Command, Rejection};
use crate::log::arbiter::{Arbiter, Owner};
use crate::log::record::{partition_for, Reply};
use crate::log::EventLog;
use crate::store::Db;

/// What the accounts the writers keep may weigh in all, by default
/// ([`WriterConfig::cache_bytes_max`] is a partition's share): the most
/// that kept a 10-minute run on 1,000,000 members under 1 GiB of RSS (867
/// MiB; 192 MiB took 1,070; 1,013 since half of it may hold rows; 4-minute
/// runs peaked at 707-734 MiB since nine tenths of it may hold rows; 400
/// MiB kept 771,000 members but took 1,281 MiB in 10 minutes). A `SubmitBatch`
/// run on 100,000 members of ~11 commands each, which weigh ~290 MiB,
/// measured ~5 % slower with it than with every member kept
/// (docs/benchmarks-log.md).
pub const WRITER_CACHE_BYTES: usize = 160 << 20;
/// The least share of it a partition gets (a few hundred accounts), unless
/// the whole is less.
pub const CACHE_BYTES_PARTITION_MIN: usize = 1 << 20;

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
    /// What the accounts a partition's writer keeps (decoded, and as rows)
    /// may weigh, in bytes, about ([`crate::domain::Account::bytes`]); the
    /// store has them all.
    pub cache_bytes_max: usize,
    /// True in a cluster: write only the partitions the consumer group
    /// assigns (false: every partition).
    pub assigned_only: bool,
    /// The address other instances reach this one at, carried by its
    /// claims so they can forward commands here (empty: none).
    pub advertise: String,
    /// Records of its partition from which a writer without state folds
    /// the log behind instead of through the live path (`rebuild`).
    pub bulk_catch_up_records_min: u64,
    /// The largest record a writer appends (0: the log's own bound,
    /// [`crate::log::EventLog::record_bytes_max`]; lower only in tests).
    pub record_bytes_max: usize,
    /// How long a scheduled settlement that failed (its record would not
    /// fit, or a total would overflow) is set aside before it is tried again,
    /// so the rest of the due index moves on.
    pub tick_set_aside_ms: i64,
    /// Where the writers count their batches and appends.
    pub metrics: crate::metrics::Metrics,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_commands_max: 1024,
            queue_commands_max: 8192,
            tick_interval_ms: 1000,
            tick_accounts_max: 512,
            cache_bytes_max: WRITER_CACHE_BYTES / 4,
            assigned_only: false,
            advertise: String::new(),
            bulk_catch_up_records_min: rebuild::BULK_CATCH_UP_RECORDS_MIN,
            record_bytes_max: 0,
            tick_set_aside_ms: 10 * 60 * 1000,
            metrics: crate::metrics::Metrics::default(),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("request id {0} was already used with different content")]
    RequestIdReused(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The command's record would not fit the log; refused alone.
    #[error("the command's record would take {bytes} bytes; the log takes at most {max}")]
    RecordTooLarge { bytes: usize, max: usize },
}

impl WriteError {
    /// The reason code the API answers with (see `api::errors`).
    pub fn reason_code(&self) -> &'static str {
        match self {
            WriteError::Rejected(r) => r.reason.as_str(),
            WriteError::RequestIdReused(_) => "REQUEST_ID_REUSED",
            WriteError::Unavailable(Unavailable::PartitionMoving(_) | Unavailable::TakenOver { .. }) => {
                "PARTITION_MOVING"
            }
            WriteError::Unavailable(_) => "UNAVAILABLE",
            WriteError::RecordTooLarge { .. } => "RECORD_TOO_LARGE",
        }
    }
}

/// Why a command cannot be decided now. Every cause is safe to retry with
/// the same request id: nothing of the command was acknowledged.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("partition {0} is catching up with the log; retry shortly")]
    CatchingUp(u32),
    /// Between owners (a rebalance in progress), or its owner cannot be
    /// reached from here.
    #[error("partition {0} is moving between instances; retry shortly")]
    PartitionMoving(u32),
    #[error("partition {partition} was taken over by a newer writer{}; this instance no longer writes it", epoch_text(*.epoch))]
    TakenOver { partition: u32, epoch: Option<u64> },
    #[error("the writer of partition {0} has stopped")]
    WriterStopped(u32),
    /// The log refused or could not take the append (or the re-read after one).
    #[error("log unavailable: {0}")]
    Log(String),
    /// The append's outcome is unknown: it may still land (and then count
    /// for the retry, which is answered `replayed`).
    #[error("log read-back did not confirm the batch: {0}")]
    NotConfirmed(String),
    /// Other partitions kept counting against the programme-wide cap.
    #[error("the programme-wide daily cap is contended; retry")]
    CapContended,
}

fn epoch_text(epoch: Option<u64>) -> String {
    epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default()
}

/// Where a command's answer goes, and the span of the call that waits for
/// it (the writer's spans of the command are its children).
struct ReplyTx {
    tx: oneshot::Sender<Result<Reply, WriteError>>,
    span: tracing::Span,
}

impl ReplyTx {
    /// Answers; a caller that stopped waiting is no error.
    fn send(self, answer: Result<Reply, WriteError>) {
        let _ = self.tx.send(answer);
    }
}
/// A preview's answer: the events the command would cause now.
type PreviewTx = oneshot::Sender<Result<Vec<crate::domain::Event>, WriteError>>;

/// What a partition's writer thread takes from its queue.
enum Msg {
    Submit(Box<Command>, ReplyTx),
    /// Decide against the committed state and answer; write nothing.
    Preview(Box<Command>, PreviewTx),
    /// Settle what is due; the sender, if any, hears when that is done.
    Tick(Option<oneshot::Sender<()>>),
    /// The partition's assignment changed: look at it now.
    Wake,
}

/// The handle the API submits commands through.
pub struct Writers {
    senders: Vec<mpsc::Sender<Msg>>,
    threads: Vec<JoinHandle<()>>,
    ownership: Arc<Ownership>,
    /// The next offset each partition's committed state (its views) folds.
    positions: tokio::sync::watch::Receiver<Vec<u64>>,
    /// Each partition's arbiter as committed: its latest counted claim's
    /// epoch and owner (who writes it, per the log).
    owners: Arc<RwLock<Vec<Arbiter>>>,
    /// Names this process in its claims.
    writer_id: Arc<str>,
    advertise: String,
    /// The most commands a writer appends in one batch.
    batch_commands_max: usize,
}

impl Writers {
    /// Starts every partition's writer and their scheduler. Each writer first
    /// catches up with the log, then claims its partition when it is wanted
    /// (on a shared log), or follows it; until then its commands are
    /// answered `Unavailable`. Must run inside a tokio runtime (for the ticker).
    pub fn start(
        log: Arc<dyn EventLog>,
        store: Arc<Db>,
        programmes: &Arc<Programmes>,
        clock: Arc<dyn Clock>,
        config: WriterConfig,
    ) -> anyhow::Result<Writers> {
        let registry = programmes.registry();
        // In a cluster the programme-wide cap is counted in shares.
        let shares = config.assigned_only.then(|| programmes.clone());
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let ownership = Arc::new(Ownership::new(log.partitions(), config.assigned_only));
        let writer_id: Arc<str> = follow::writer_id().into();
        let issuance = Arc::new(Issuance::default());
        let cursors: Vec<crate::store::Cursor> =
            (0..log.partitions()).map(|p| crate::store::read_cursor(&store, p)).collect::<Result<_, _>>()?;
        let (positions_tx, positions) = tokio::sync::watch::channel(cursors.iter().map(|c| c.next).collect());
        let positions_tx = Arc::new(positions_tx);
        let owners = Arc::new(RwLock::new(cursors.iter().map(|c| c.arbiter.clone()).collect()));
        for partition in 0..log.partitions() {
            issuance.add(&issuance::load(&store, partition)?, 1);
            let w = partition::PartitionWriter::new(partition::Parts {
                partition,
                issuance: issuance.clone(),
                log: log.clone(),
                store: store.clone(),
                registry: registry.clone(),
                clock: clock.clone(),
                config: config.clone(),
                writer_id: writer_id.clone(),
                ownership: ownership.clone(),
                positions: positions_tx.clone(),
                owners: owners.clone(),
                programmes: shares.clone(),
            })?;
            let (tx, rx) = mpsc::channel(config.queue_commands_max);
            senders.push(tx);
            threads.push(std::thread::Builder::new().name(format!("writer-{partition}")).spawn(move || w.run(rx))?);
        }
        ownership.set_wakers(&senders);
        scheduler::start_ticker(&senders, config.tick_interval_ms);
        let advertise = config.advertise.clone();
        let batch_commands_max = config.batch_commands_max;
        Ok(Writers { senders, threads, ownership, positions, owners, writer_id, advertise, batch_commands_max })
    }

    /// Waits until this instance can take commands ([`Ownership::serving`]).
    pub async fn ready(&self) {
        self.ownership.until_serving().await
    }

    /// Where each partition's committed state (its views) stands: the next
    /// offset it folds (everything below is in).
    pub fn positions(&self) -> tokio::sync::watch::Receiver<Vec<u64>> {
        self.positions.clone()
    }

    /// Whether this instance can take commands now ([`Ownership::serving`]).
    pub fn serving(&self) -> bool {
        self.ownership.serving()
    }

    /// Which partitions this instance wants and owns; for the group member.
    pub fn ownership(&self) -> Arc<Ownership> {
        self.ownership.clone()
    }

    /// Whether this instance writes partition `p` now.
    pub fn owns(&self, p: u32) -> bool {
        self.ownership.status(p) == Mode::Writing
    }

    /// Whether `offset` lies past the end of partition `p`'s log, as far as
    /// this instance can tell at once: it writes `p`, so every record the
    /// partition holds is in its views or in the one batch it is answering
    /// (whose offsets follow the views' position).
    pub fn past_end(&self, p: u32, offset: u64) -> bool {
        let next = self.positions.borrow().get(p as usize).copied().unwrap_or(0);
        // A batch's records, and the claim a writer may append before them.
        let in_flight = self.batch_commands_max as u64 + 1;
        self.owns(p) && offset >= next.saturating_add(in_flight)
    }

    /// Whether commands for `p` would wait here for its catch-up (rather
    /// than belong to another instance).
    pub fn catching_up(&self, p: u32) -> bool {
        self.ownership.status(p) == Mode::CatchingUp
    }

    /// Who writes partition `p`, as its latest counted claim says.
    pub fn owner_of(&self, p: u32) -> Option<Arc<Owner>> {
        self.owners.read().expect("owners lock").get(p as usize).and_then(|a| a.writer().cloned())
    }

    /// The epoch of partition `p`'s latest counted claim (0: none).
    pub fn epoch_of(&self, p: u32) -> u64 {
        self.owners.read().expect("owners lock").get(p as usize).map_or(0, |a| a.epoch)
    }

    /// Every partition's writer as its latest counted claim says (None:
    /// never claimed, or released).
    pub fn owners(&self) -> Vec<Option<Arc<Owner>>> {
        self.owners.read().expect("owners lock").iter().map(|a| a.writer().cloned()).collect()
    }

    /// The name this process's claims carry.
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// The address this instance's claims carry.
    pub fn advertise(&self) -> &str {
        &self.advertise
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

    /// The events `command` would cause if its writer decided it now,
    /// against the account as last committed; nothing is written.
    pub async fn preview(&self, command: Command) -> Result<Vec<crate::domain::Event>, WriteError> {
        let (tx, rx) = oneshot::channel();
        let p = self.queue(command, |c| Msg::Preview(c, tx)).await?;
        rx.await.map_err(|_| Unavailable::WriterStopped(p))?
    }

    async fn send(&self, command: Command) -> Result<(u32, oneshot::Receiver<Result<Reply, WriteError>>), WriteError> {
        let (tx, rx) = oneshot::channel();
        let tx = ReplyTx { tx, span: tracing::Span::current() };
        let p = self.queue(command, |c| Msg::Submit(c, tx)).await?;
        Ok((p, rx))
    }

    /// Queues `command` (as `msg` makes it) for its partition's writer, when
    /// this instance writes the partition; returns the partition.
    async fn queue(&self, command: Command, msg: impl FnOnce(Box<Command>) -> Msg) -> Result<u32, WriteError> {
        let p = self.partition_of(&command.account);
        match self.ownership.status(p) {
            Mode::Writing => {}
            Mode::CatchingUp => return Err(Unavailable::CatchingUp(p).into()),
            _ => return Err(Unavailable::PartitionMoving(p).into()),
        }
        self.senders[p as usize].send(msg(Box::new(command))).await.map_err(|_| Unavailable::WriterStopped(p))?;
        Ok(p)
    }

    async fn answer(
        sent: Result<(u32, oneshot::Receiver<Result<Reply, WriteError>>), WriteError>,
    ) -> Result<Reply, WriteError> {
        let (p, rx) = sent?;
        rx.await.map_err(|_| Unavailable::WriterStopped(p))?
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
