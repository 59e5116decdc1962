//! A partition's writer: its state, and one batch (group commit) in named
//! phases: **gather** the queued commands (and, on a tick, the accounts
//! due), **decide** each against the state the earlier ones left (retries
//! answered from the idempotency records), **append and confirm** the
//! accepted records in one durable append (read back on a shared log),
//! **answer** every caller, then **commit** the state the log now determines
//! (a retry is decided in a later batch, after this commit; if the commit
//! fails, the writer starts over from its stored state and the log).
//!
//! The state a writer commits is the partition's views too: its accounts
//! (the balance view), their statements (pages) and the expiry index, with
//! the idempotency records, the due index and the programme issuance, in
//! one WriteBatch with the cursor they reflect. Each account is folded once,
//! by the writer, and written once; the rows are those the projection's
//! fold writes (`projection::fold`: the same functions), so a rebuild from
//! offset zero gives the same bytes. A partition another writer took over
//! is followed: its records are folded the same way as they arrive.
//!
//! On start a writer folds the log from its cursor to the end before it
//! takes any command (until then its partition answers `Unavailable`), so
//! nothing acknowledged is lost and nothing is applied twice. Time: the
//! writer reads the clock once per batch and never lets it run backwards
//! within a partition.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::follow::ReadBack;
use super::issuance::{earned_in, issued_key, Granted, Issuance};
use super::ownership::Ownership;
use super::programmes::Programmes;
use super::programmes::SharedRegistry;
use super::shares::ShareDecision;
use super::{Clock, Msg, PreviewTx, ReplyTx, Unavailable, WriteError, WriterConfig, FOLLOWING, READY, RELEASING};
use crate::domain::{self, Account, AccountKey, Command, CommandBody, Millis, Points, ProgrammeKey};
use crate::log::arbiter::Arbiter;
use crate::log::record::{AccountRecord, Balance, CapMode, PartitionRecord, Position, Reply};
use crate::log::{codec, EventLog, LogError, LogReader, LogRecord};
use crate::projection::{self, EntryPlace, Tail};
use crate::store::{self, accounts, snapshot, Batch, Cf, Cursor, Db};
use crate::FastMap;

/// How long a writer that cannot catch up with the log yet waits before it
/// tries again.
const START_UP_RETRY_MS: u64 = 1000;
/// How long a writer following a partition another writer took over waits
/// for new records.
const FOLLOW_POLL_MS: u64 = 100;
/// Times an earn under a programme-wide cap is decided again because
/// another partition counted against the cap in between, at most.
const CAP_DECIDE_ATTEMPTS_MAX: usize = 64;

pub(super) struct PartitionWriter {
    pub(super) partition: u32,
    pub(super) issuance: Arc<Issuance>,
    pub(super) log: Arc<dyn EventLog>,
    /// The largest record this writer appends (the log's bound, or lower).
    record_bytes_max: usize,
    pub(super) store: Arc<Db>,
    pub(super) registry: SharedRegistry,
    pub(super) clock: Arc<dyn Clock>,
    /// Accounts as of the last committed batch (a cache of the store).
    cache: FastMap<AccountKey, Kept>,
    /// The latest `now` used, so time never runs backwards in a partition.
    pub(super) last_now: Millis,
    pub(super) config: WriterConfig,
    /// Names this process in its claim markers.
    pub(super) writer_id: Arc<str>,
    /// The next offset the state reflects, and the log's arbiter there.
    pub(super) cursor: Cursor,
    /// A reader kept at `cursor.next` between batches (shared logs).
    pub(super) reader: Option<Box<dyn LogReader>>,
    /// Whether `reader` is a follower's (see [`crate::log::EventLog::follower`]).
    pub(super) reader_follows: bool,
    /// Set while following a partition written elsewhere: readers made
    /// then may trail the end by a moment.
    pub(super) following: bool,
    /// The offset of the latest claim admitted up to `cursor`.
    pub(super) last_claim: Option<u64>,
    /// Our own claim's offset, once we own the partition (shared logs).
    pub(super) own_claim: Option<u64>,
    /// True after an append whose outcome is unknown: the state may lack
    /// records the log has; re-read (and re-claim) before deciding again.
    pub(super) stale: bool,
    /// Whether this partition is wanted here, and the writers' statuses.
    pub(super) ownership: Arc<Ownership>,
    /// Where each partition's committed state (its views) stands: the next
    /// offset, for queries waiting on `min_position`.
    pub(super) positions: Arc<tokio::sync::watch::Sender<Vec<u64>>>,
    /// Each partition's arbiter (latest counted claim), as committed.
    pub(super) owners: Arc<RwLock<Vec<Arbiter>>>,
    /// In a cluster: where cap shares are taken (None: the exact counter).
    pub(super) programmes: Option<Arc<Programmes>>,
    /// What this partition has granted per programme day, as committed.
    pub(super) issued: Granted,
    /// Its batches' sizes, append times and queue depth, in the metrics.
    observed: Observed,
}

/// A writer's metrics (handles made once).
struct Observed {
    batch_commands: crate::metrics::Histogram,
    append_seconds: crate::metrics::Histogram,
    queue_commands: crate::metrics::Gauge,
}

impl Observed {
    fn new(metrics: &crate::metrics::Metrics, partition: u32) -> Observed {
        use crate::metrics::{APPEND_SECONDS, BATCH_COMMANDS, QUEUE_COMMANDS};
        let p = [("partition", partition.to_string())];
        Observed {
            batch_commands: metrics.histogram(BATCH_COMMANDS, &[]),
            append_seconds: metrics.histogram(APPEND_SECONDS, &[]),
            queue_commands: metrics.gauge(QUEUE_COMMANDS, &p),
        }
    }
}

/// The writer's spans of a batch's commands, each a child of its call's
/// span (none when tracing is off: a disabled callsite's check each).
struct BatchSpans(Vec<tracing::Span>);

impl BatchSpans {
    fn of(partition: u32, msgs: &[Msg]) -> BatchSpans {
        let commands = msgs.len();
        let spans = msgs.iter().filter_map(|m| match m {
            Msg::Submit(_, tx) if !tx.span.is_disabled() => {
                Some(tracing::debug_span!(parent: &tx.span, "writer.batch", partition, commands))
            }
            _ => None,
        });
        BatchSpans(spans.collect())
    }

    /// The append's span under each command's, while it lasts.
    fn appending(&self, records: usize) -> Vec<tracing::Span> {
        self.0.iter().map(|s| tracing::debug_span!(parent: s, "log.append", records)).collect()
    }
}

/// An account as of the last committed batch.
struct Kept {
    account: Account,
    /// The instant its due-index row stands at.
    due: Option<Millis>,
    /// How it is stored.
    changed: accounts::Changed,
    /// The last page of its statement, while it has room.
    page: Option<Tail>,
    /// Put back by a batch since the cache last made room (see
    /// [`make_room`]).
    recent: bool,
}

/// Share of [`WriterConfig::cache_accounts_max`] a full cache is brought
/// back to, in per cent.
const CACHE_KEPT_AFTER_EVICTION_PERCENT: usize = 75;

/// Brings a cache holding more than `max` accounts (with `coming` about to be
/// put back) down to [`CACHE_KEPT_AFTER_EVICTION_PERCENT`] of `max`: accounts
/// no batch put back since the last time go first, then any (the store has
/// them all). Every account kept loses its mark, so the next time those that
/// were used in between are the ones kept (a clock with one bit). Clearing
/// the whole cache instead made every member a miss again each time a
/// partition's active members outgrew it.
/// The idempotency record of a command's reply: the fingerprint, the
/// record's offset and the balance after it (a retry's reply is rebuilt from
/// the record); on a shared log the whole reply, as reading one record back
/// there takes a consumer of its own (and the broker's time).
pub(super) fn request_row(shared: bool, fingerprint: u64, reply: &Reply) -> Vec<u8> {
    if shared {
        snapshot::encode_stored_reply(fingerprint, reply)
    } else {
        snapshot::encode_request(fingerprint, reply.position.offset, &reply.balance)
    }
}

fn make_room(cache: &mut FastMap<AccountKey, Kept>, coming: usize, max: usize) {
    if cache.len() + coming <= max {
        return;
    }
    let target = (max * CACHE_KEPT_AFTER_EVICTION_PERCENT / 100).saturating_sub(coming);
    let mut over = cache.len().saturating_sub(target);
    cache.retain(|_, kept| {
        if over > 0 && !kept.recent {
            over -= 1;
            return false;
        }
        kept.recent = false;
        true
    });
    if over > 0 {
        // Every account was used since last time: any go.
        cache.retain(|_, _| {
            if over > 0 {
                over -= 1;
                return false;
            }
            true
        });
    }
}

/// What a writer is made of.
pub(super) struct Parts {
    pub partition: u32,
    pub issuance: Arc<Issuance>,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<Db>,
    pub registry: SharedRegistry,
    pub clock: Arc<dyn Clock>,
    pub config: WriterConfig,
    pub writer_id: Arc<str>,
    pub ownership: Arc<Ownership>,
    pub positions: Arc<tokio::sync::watch::Sender<Vec<u64>>>,
    pub owners: Arc<RwLock<Vec<Arbiter>>>,
    pub programmes: Option<Arc<Programmes>>,
}

/// State changed by one batch, not yet committed.
#[derive(Default)]
pub(super) struct Work {
    /// Accounts the batch has looked at.
    pub(super) accounts: FastMap<AccountKey, Touched>,
    /// (account, request id, fingerprint, reply) for the idempotency records.
    pub(super) replies: Vec<(AccountKey, String, u64, Reply)>,
    /// Due-index rows a tick took up: deleted at commit, and each account's
    /// current due instant put back (a row can go stale when the rules that
    /// set it change, e.g. the level window).
    pub(super) ticked: Vec<(Vec<u8>, AccountKey)>,
    /// Points granted by records read back from the log (added to the
    /// shared issuance at commit).
    pub(super) issued_folded: Granted,
    /// Points granted by this batch's decisions (already in the shared
    /// issuance; taken out again if the batch fails).
    pub(super) issued_reserved: Granted,
    /// The last entries of the statement pages the batch filled (added to
    /// their rows).
    pub(super) pages: Vec<(Vec<u8>, Vec<u8>)>,
    /// Records read that every reader skips, and why (noted in the views).
    pub(super) quarantined: Quarantined,
    /// Claims and releases read, with the arbitration after each (noted in
    /// the views).
    pub(super) arbiters: Vec<(Position, crate::log::arbiter::Arbiter)>,
    /// How far the level re-evaluation walked (rows of the due column family).
    pub(super) levels_progress: super::reevaluate::Rows,
    /// The accounts the walk ticked: their due instant is put in the index
    /// afresh (the rules it follows changed).
    pub(super) evaluated: Vec<AccountKey>,
}

/// Records read that every reader skips (ARCHITECTURE.md, "A record no
/// reader can use"), and why.
pub(super) type Quarantined = Vec<(Position, String)>;

/// An account as a batch sees it.
pub(super) struct Touched {
    /// When something in it fell due before the batch (for the due index).
    due_before: Option<Millis>,
    /// The same after the batch (set at commit).
    due_after: Option<Millis>,
    pub(super) account: Account,
    /// What events changed (only that is written back).
    changed: accounts::Changed,
    /// The last page of its statement, while it has room.
    page: Option<Tail>,
}

/// The commands of one batch, gathered from the queue.
struct Gathered {
    /// Callers' commands with their answer's sender; the writer's own
    /// (ticks) without one.
    commands: Vec<(Command, Option<ReplyTx>)>,
    /// Senders of `Msg::Tick` waiting for the batch: they hear when it is
    /// done (appended, or failed), as these are dropped.
    tick_waiters: Vec<oneshot::Sender<()>>,
    /// Due-index rows the tick took up.
    ticked: Vec<(Vec<u8>, AccountKey)>,
    /// Commands to decide without writing, answered before the batch.
    previews: Vec<(Command, PreviewTx)>,
    /// How far the level re-evaluation walked, written with the batch.
    levels_progress: super::reevaluate::Rows,
    /// The accounts it ticked.
    evaluated: Vec<AccountKey>,
}

/// A batch as decided: the records to append, in order, and who waits for
/// which.
struct Decided {
    work: Work,
    /// Each record with the account's balance right after each of its
    /// events, and after it.
    records: Vec<(AccountRecord, Vec<Balance>, Balance, Vec<u8>)>,
    /// (caller, index of its record, whether it repeats an earlier command
    /// of this batch).
    waiting: Vec<(ReplyTx, usize, bool)>,
    /// (account, request id) → (fingerprint, record index) of this batch.
    in_batch: FastMap<(AccountKey, String), (u64, usize)>,
    /// Accepted commands that changed nothing (an `Expire` with nothing
    /// due): no record, answered with the account as the batch leaves it
    /// once the batch's records are durable.
    unchanged: Vec<(ReplyTx, Reply)>,
    /// Accounts whose scheduled settlement failed: set aside for a while.
    set_aside: Vec<AccountKey>,
}

impl PartitionWriter {
    pub(super) fn new(p: Parts) -> Result<PartitionWriter, store::StoreError> {
        let log_bytes_max = p.log.record_bytes_max();
        let observed = Observed::new(&p.config.metrics, p.partition);
        Ok(PartitionWriter {
            observed,
            record_bytes_max: match p.config.record_bytes_max {
                0 => log_bytes_max,
                given => given.min(log_bytes_max),
            },
            issued: super::issuance::load(&p.store, p.partition)?,
            cursor: store::read_cursor(&p.store, p.partition)?,
            partition: p.partition,
            issuance: p.issuance,
            log: p.log,
            store: p.store,
            registry: p.registry,
            clock: p.clock,
            cache: FastMap::default(),
            last_now: 0,
            config: p.config,
            writer_id: p.writer_id,
            reader: None,
            reader_follows: false,
            following: false,
            last_claim: None,
            own_claim: None,
            stale: false,
            ownership: p.ownership,
            positions: p.positions,
            owners: p.owners,
            programmes: p.programmes,
        })
    }

    fn programme(&self, key: &AccountKey) -> Option<Arc<domain::Programme>> {
        self.registry.read().expect("registry lock").current(&key.programme())
    }

    /// One batch: gather, decide, append and confirm, answer, commit.
    fn process(&mut self, msgs: Vec<Msg>) -> anyhow::Result<()> {
        if !matches!(self.ownership.status(self.partition), READY | RELEASING) {
            Self::refuse(msgs, &Unavailable::PartitionMoving(self.partition));
            return Ok(());
        }
        if self.stale {
            if let Err(e) = self.resync() {
                tracing::warn!(partition = self.partition, error = %e, "writer cannot re-read the log yet");
                Self::refuse(msgs, &Unavailable::Log(e.to_string()));
                return Ok(());
            }
        }
        if self.log.shared() && msgs.iter().any(|m| matches!(m, Msg::Tick(_))) {
            match self.taken_over() {
                Ok(false) => {}
                Ok(true) => {
                    Self::refuse(msgs, &Unavailable::TakenOver { partition: self.partition, epoch: None });
                    return Ok(());
                }
                // The log is unreachable: the batch finds out (and answers
                // UNAVAILABLE) when it appends.
                Err(e) => {
                    tracing::debug!(partition = self.partition, error = %e, "cannot look for newer claims now");
                    self.reader = None;
                }
            }
        }
        let now = self.clock.now().max(self.last_now);
        self.last_now = now;
        let spans = BatchSpans::of(self.partition, &msgs);
        let mut gathered = self.gather(msgs, now)?;
        self.preview(std::mem::take(&mut gathered.previews), now)?;
        let mut decided = self.decide(gathered.commands, gathered.ticked, now)?;
        decided.work.levels_progress = std::mem::take(&mut gathered.levels_progress);
        decided.work.evaluated = std::mem::take(&mut gathered.evaluated);
        self.set_aside(&mut decided, now)?;
        if decided.records.is_empty() {
            self.write_levels_progress(&mut decided.work)?;
            let at = self.cursor.next.saturating_sub(1);
            for (tx, reply) in decided.unchanged.drain(..) {
                tx.send(Ok(Reply { position: Position { partition: self.partition, offset: at }, ..reply }));
            }
            return Ok(());
        }
        let appending = spans.appending(decided.records.len());
        let appended = self.append_and_confirm(&mut decided.records);
        drop(appending);
        let (offsets, quarantined) = match appended {
            Ok(confirmed) => confirmed,
            Err(cause) => {
                self.fail(decided, cause);
                return Ok(());
            }
        };
        let mut work = self.answer(decided, &offsets);
        work.quarantined = quarantined;
        self.commit(work)?;
        drop(gathered.tick_waiters);
        Ok(())
    }

    /// Gather: the queued commands, and on the batch's first tick one `Tick`
    /// command per account due by `now` (from the due index).
    fn gather(&self, msgs: Vec<Msg>, now: Millis) -> Result<Gathered, store::StoreError> {
        let mut g = Gathered {
            commands: Vec::with_capacity(msgs.len()),
            previews: Vec::new(),
            levels_progress: Vec::new(),
            evaluated: Vec::new(),
            tick_waiters: Vec::new(),
            ticked: Vec::new(),
        };
        let mut ticked = false;
        for m in msgs {
            match m {
                Msg::Submit(c, tx) => g.commands.push((*c, Some(tx))),
                Msg::Preview(c, tx) => g.previews.push((*c, tx)),
                Msg::Wake => {}
                Msg::Tick(done) => {
                    g.tick_waiters.extend(done);
                    if ticked {
                        continue;
                    }
                    ticked = true;
                    let due = super::scheduler::due_accounts(
                        &self.store,
                        self.partition,
                        now,
                        self.config.tick_accounts_max,
                    )?;
                    let room = self.config.tick_accounts_max.saturating_sub(due.len());
                    let mut tick = Vec::with_capacity(due.len());
                    for (row, account) in due {
                        g.ticked.push((row, account.clone()));
                        tick.push(account);
                    }
                    let (evaluate, progress) = {
                        let registry = self.registry.read().expect("registry lock");
                        let partitions = self.log.partitions();
                        super::reevaluate::accounts_to_evaluate(
                            &self.store,
                            &registry,
                            self.partition,
                            partitions,
                            room,
                        )?
                    };
                    g.levels_progress = progress;
                    g.evaluated = evaluate.clone();
                    for account in tick.into_iter().chain(evaluate) {
                        let body = CommandBody::Tick;
                        g.commands.push((
                            Command { request_id: String::new(), account, body, context: Default::default() },
                            None,
                        ));
                    }
                }
            }
        }
        Ok(g)
    }

    /// Decide: each command against the state the earlier ones left; retries
    /// and reused request ids are answered on the way.
    fn decide(
        &mut self,
        commands: Vec<(Command, Option<ReplyTx>)>,
        ticked: Vec<(Vec<u8>, AccountKey)>,
        now: Millis,
    ) -> anyhow::Result<Decided> {
        let mut d = Decided {
            work: Work { ticked, ..Work::default() },
            records: Vec::new(),
            waiting: Vec::new(),
            in_batch: FastMap::default(),
            unchanged: Vec::new(),
            set_aside: Vec::new(),
        };
        for (cmd, tx) in commands {
            let fingerprint = domain::fingerprint(&cmd);
            // Callers' commands are idempotent; the writer's own have no id.
            let tx = match tx {
                None => None,
                Some(tx) => match self.seen_before(&mut d, &cmd, fingerprint, tx)? {
                    Some(tx) => Some(tx),
                    None => continue,
                },
            };
            self.decide_command(&mut d, cmd, tx, fingerprint, now)?;
        }
        Ok(d)
    }

    /// A caller's command whose request id this batch or the idempotency
    /// records already hold is answered here (its original answer, or
    /// `RequestIdReused`); a new one gets its sender back.
    fn seen_before(
        &self,
        d: &mut Decided,
        cmd: &Command,
        fingerprint: u64,
        tx: ReplyTx,
    ) -> anyhow::Result<Option<ReplyTx>> {
        let key = (cmd.account.clone(), cmd.request_id.clone());
        if let Some(&(fp, i)) = d.in_batch.get(&key) {
            if fp == fingerprint {
                d.waiting.push((tx, i, true));
            } else {
                tx.send(Err(WriteError::RequestIdReused(cmd.request_id.clone())));
            }
            return Ok(None);
        }
        let Some(bytes) = self.store.get(Cf::Requests, &store::request_key(&cmd.account, &cmd.request_id))? else {
            return Ok(Some(tx));
        };
        let (fp, reply) = match snapshot::decode_request(&bytes)? {
            snapshot::StoredRequest::Reply(fp, reply) => (fp, reply),
            snapshot::StoredRequest::At { fingerprint: fp, offset, balance } if fp == fingerprint => {
                match self.reply_at(offset, balance, cmd) {
                    Ok(reply) => (fp, reply),
                    // The retry's record is in the log, its reply just
                    // cannot be read now: the caller retries again.
                    Err(e) => {
                        tracing::warn!(partition = self.partition, offset, error = %e, "cannot read a retried command's record");
                        tx.send(Err(Unavailable::Log(format!("reading the record at offset {offset}: {e}")).into()));
                        return Ok(None);
                    }
                }
            }
            snapshot::StoredRequest::At { fingerprint: fp, .. } => (fp, Reply::default()),
        };
        tx.send(if fp == fingerprint {
            Ok(Reply { replayed: true, ..reply })
        } else {
            Err(WriteError::RequestIdReused(key.1))
        });
        Ok(None)
    }

    /// The reply of the record at `offset` of this partition (a retry of
    /// `cmd`), with the balance its idempotency record kept. The record read
    /// must be `cmd`'s own (its account and request id): a damaged row or
    /// log never answers one caller with another's reply.
    fn reply_at(&self, offset: u64, balance: Balance, cmd: &Command) -> anyhow::Result<Reply> {
        let mut reader = self.log.reader(self.partition, offset)?;
        let entries = crate::log::read_towards(reader.as_mut(), offset + 1, 1)?;
        let entry = entries.first().ok_or_else(|| anyhow::anyhow!("no record at offset {offset}"))?;
        match codec::decode_partition_record(&entry.payload)? {
            PartitionRecord::Account(record)
                if record.account == cmd.account && record.request_id == cmd.request_id =>
            {
                Ok(Reply::for_record(&record, Position { partition: self.partition, offset }, balance))
            }
            PartitionRecord::Account(record) => anyhow::bail!(
                "offset {offset} holds {}'s request {:?}, not this request's record",
                record.account,
                record.request_id
            ),
            PartitionRecord::Claim(_) => anyhow::bail!("offset {offset} holds a claim, not a command's record"),
        }
    }

    /// Previews: each command decided against its account as last committed
    /// (the cache's, or the store's), answered with its events; nothing is
    /// kept or written.
    fn preview(&mut self, previews: Vec<(Command, PreviewTx)>, now: Millis) -> Result<(), store::StoreError> {
        for (cmd, tx) in previews {
            let programme = self.programme(&cmd.account);
            let stored;
            let account = match self.cache.get(&cmd.account) {
                Some(kept) => &kept.account,
                None => {
                    stored = accounts::load_with_tail(&self.store, Cf::Accounts, &cmd.account)?.0;
                    &stored
                }
            };
            let p = programme.as_deref();
            let capped = p.filter(|p| p.programme_daily_issuance_cap > 0);
            let seen = capped.map_or(0, |p| {
                self.issuance.today(&cmd.account.programme(), domain::calendar::programme_day(p.time_zone, now))
            });
            let limits = domain::Limits { programme_issued_today: seen };
            let decided = domain::decide_with(p, account, &cmd, now, &limits).map_err(WriteError::Rejected);
            let _ = tx.send(decided);
        }
        Ok(())
    }

    /// Decides one new command and, when it is accepted (or a tick found
    /// something due), folds it and queues its record.
    fn decide_command(
        &mut self,
        d: &mut Decided,
        cmd: Command,
        tx: Option<ReplyTx>,
        fingerprint: u64,
        now: Millis,
    ) -> anyhow::Result<()> {
        let programme = self.programme(&cmd.account);
        let (events, granted, cap_mode) = match self.decide_counted(&mut d.work, &cmd, programme.as_deref(), now)? {
            Ok(decided) => decided,
            Err(e) => {
                match tx {
                    Some(tx) => {
                        tx.send(Err(e));
                    }
                    None => {
                        let version = programme.map(|p| p.version).unwrap_or(0);
                        let record = self.record(cmd, version, fingerprint, now, Vec::new(), CapMode::None);
                        self.settlement_set_aside(d, record, &e)?;
                    }
                }
                return Ok(());
            }
        };
        if events.is_empty() {
            // A tick with nothing due, or a command that changes nothing: no
            // record (an empty one would only grow the log).
            if let Some(tx) = tx {
                let (_, balance) = Self::fold(self.account(&mut d.work, &cmd.account)?, &[]);
                let version = programme.map(|p| p.version).unwrap_or(0);
                let reply =
                    Reply { request_id: cmd.request_id, balance, programme_version: version, ..Reply::default() };
                d.unchanged.push((tx, reply));
            }
            return Ok(());
        }
        let version = programme.map(|p| p.version).unwrap_or(0);
        let record = self.record(cmd, version, fingerprint, now, events, cap_mode);
        let payload = codec::encode_account_record(&record);
        if payload.len() > self.record_bytes_max {
            // Refused alone: the rest of the batch goes on.
            self.issuance.add(&granted, -1);
            let e = WriteError::RecordTooLarge { bytes: payload.len(), max: self.record_bytes_max };
            match tx {
                Some(tx) => {
                    tx.send(Err(e));
                }
                None => self.settlement_set_aside(d, record, &e)?,
            }
            return Ok(());
        }
        let (balances, balance) = Self::fold(self.account(&mut d.work, &record.account)?, &record.events);
        for (k, v) in granted {
            *d.work.issued_reserved.entry(k).or_default() += v;
        }
        if let Some(tx) = tx {
            let key = (record.account.clone(), record.request_id.clone());
            d.in_batch.insert(key, (fingerprint, d.records.len()));
            d.waiting.push((tx, d.records.len(), false));
        }
        d.records.push((record, balances, balance, payload));
        Ok(())
    }

    /// A scheduled settlement that failed (`record` is the tick's, its events
    /// dropped): a `SettlementSetAside` record in its place, which the risk
    /// view raises as an alert, and the account set aside.
    fn settlement_set_aside(
        &mut self,
        d: &mut Decided,
        mut record: AccountRecord,
        e: &WriteError,
    ) -> Result<(), store::StoreError> {
        let retry_at = record.at.saturating_add(self.config.tick_set_aside_ms);
        record.events = vec![domain::Event::SettlementSetAside { reason: e.reason_code().into(), retry_at }];
        record.cap_mode = CapMode::None;
        tracing::error!(partition = self.partition, account = %record.account, error = %e, retry_at_ms = retry_at, "a scheduled settlement failed: set aside");
        let payload = codec::encode_account_record(&record);
        let (balances, balance) = Self::fold(self.account(&mut d.work, &record.account)?, &record.events);
        d.set_aside.push(record.account.clone());
        d.records.push((record, balances, balance, payload));
        Ok(())
    }

    /// The level re-evaluation's progress of a batch that wrote no record.
    fn write_levels_progress(&mut self, work: &mut Work) -> Result<(), store::StoreError> {
        if work.levels_progress.is_empty() && work.evaluated.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (k, v) in std::mem::take(&mut work.levels_progress) {
            batch.put(Cf::Due, &k, &v);
        }
        self.evaluated_due(work, &mut batch);
        self.store.write(batch)
    }

    /// The due rows of the accounts the walk ticked that nothing changed:
    /// their due instant under the rules now (a row of the old instant, if
    /// any, is taken up when it falls due and finds nothing).
    fn evaluated_due(&self, work: &Work, batch: &mut Batch) {
        for key in &work.evaluated {
            let Some(t) = work.accounts.get(key).filter(|t| t.changed.is_empty()) else { continue };
            if let Some(at) = domain::due_at(&t.account, self.programme(key).as_deref()) {
                batch.put(Cf::Due, &store::due_key(self.partition, at, key), &[]);
            }
        }
    }

    /// Scheduled settlements that failed (their record would not fit, or the
    /// decision refused) are set aside for [`WriterConfig::tick_set_aside_ms`],
    /// so the rest of the due index moves on instead of retrying them every
    /// tick.
    fn set_aside(&mut self, d: &mut Decided, now: Millis) -> Result<(), store::StoreError> {
        if d.set_aside.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        let later = now.saturating_add(self.config.tick_set_aside_ms);
        let set_aside = std::mem::take(&mut d.set_aside);
        d.work.ticked.retain(|(row, key)| {
            if !set_aside.contains(key) {
                return true;
            }
            batch.delete(Cf::Due, row);
            batch.put(Cf::Due, &store::due_key(self.partition, later, key), &[]);
            false
        });
        self.store.write(batch)
    }

    /// Decides `cmd` against its account as the batch left it and counts
    /// what it grants in the shared issuance (taken out again if the batch
    /// fails). Under a programme-wide cap an earn is decided against the
    /// day's count and counted only if no other partition counted in
    /// between; otherwise it is decided again with the new count. No lock is
    /// held while deciding.
    fn decide_counted(
        &mut self,
        work: &mut Work,
        cmd: &Command,
        programme: Option<&domain::Programme>,
        now: Millis,
    ) -> Result<ShareDecision, store::StoreError> {
        let capped =
            programme.filter(|p| p.programme_daily_issuance_cap > 0 && matches!(cmd.body, CommandBody::Earn { .. }));
        let capped_day = capped.map(|p| domain::calendar::programme_day(p.time_zone, now));
        if let (Some(p), Some(day), Some(programmes)) = (capped, capped_day, self.programmes.clone()) {
            return self.decide_under_share(work, cmd, p, now, day, &programmes);
        }
        let mode = if capped.is_some() { CapMode::Exact } else { CapMode::None };
        let key = cmd.account.programme();
        let touched = self.account(work, &cmd.account)?;
        for _attempt in 0..CAP_DECIDE_ATTEMPTS_MAX {
            let seen = capped_day.map(|day| self.issuance.today(&key, day)).unwrap_or(0);
            let limits = domain::Limits { programme_issued_today: seen };
            let events = match domain::decide_with(programme, &touched.account, cmd, now, &limits) {
                Ok(events) => events,
                Err(rejection) => return Ok(Err(WriteError::Rejected(rejection))),
            };
            let mut granted = Granted::new();
            earned_in(&cmd.account, &events, &mut granted);
            match capped_day {
                Some(day) if !granted.is_empty() => {
                    if !self.issuance.add_if_unchanged(&key, day, seen, &granted) {
                        continue;
                    }
                }
                _ => self.issuance.add(&granted, 1),
            }
            return Ok(Ok((events, granted, mode)));
        }
        Ok(Err(Unavailable::CapContended.into()))
    }

    /// What this partition has granted of `programme`'s issuance on `day`
    /// (as committed).
    pub(super) fn issued_in_partition(&self, programme: &ProgrammeKey, day: i64) -> Points {
        self.issued.get(&(programme.clone(), day)).copied().unwrap_or(0)
    }

    /// Append and confirm: one durable append of the batch's records and, on
    /// a shared log when another writer's records came in between, the
    /// read-back that proves they count. The offsets they
    /// got, or why the batch is void (or its outcome unknown).
    fn append_and_confirm(
        &mut self,
        records: &mut [(AccountRecord, Vec<Balance>, Balance, Vec<u8>)],
    ) -> Result<(Vec<u64>, Quarantined), Unavailable> {
        let encoded: Vec<LogRecord> = records
            .iter_mut()
            .map(|(r, _, _, payload)| {
                LogRecord::new(r.account.to_string().into_bytes(), std::mem::take(payload))
                    .about(crate::log::About::account(r))
            })
            .collect();
        let started = std::time::Instant::now();
        let appended = self.log.append(self.partition, &encoded);
        self.observed.append_seconds.duration(started.elapsed());
        let offsets = appended.map_err(|e| match e {
            LogError::Unavailable(m) => Unavailable::Log(m),
            other => Unavailable::Log(format!("append failed: {other}")),
        })?;
        // Right after everything this writer has folded, with no gap: no
        // other record lies before or among them, so the arbiter stands at
        // this writer's epoch there and they count. A gap means another
        // writer appended (a claim, perhaps): read the partition back.
        let contiguous = offsets.first() == Some(&self.cursor.next) && offsets.windows(2).all(|w| w[1] == w[0] + 1);
        if !self.log.shared() || contiguous {
            self.cursor.next = offsets.last().expect("a batch") + 1;
            return Ok((offsets, Vec::new()));
        }
        match self.read_back(&offsets) {
            Ok(ReadBack::Confirmed(quarantined)) => Ok((offsets, quarantined)),
            Ok(ReadBack::Fenced(epoch)) => {
                self.fence();
                // Learn the new owner before answering, so the caller's retry
                // through this instance is forwarded to it.
                self.reader = None;
                if let Err(e) =
                    self.log.end_offset(self.partition).map_err(anyhow::Error::from).and_then(|end| self.catch_up(end))
                {
                    tracing::debug!(partition = self.partition, error = %e, "cannot read the new owner's claim yet");
                }
                Err(Unavailable::TakenOver { partition: self.partition, epoch: Some(epoch) })
            }
            Ok(ReadBack::Unclear(why)) => Err(Unavailable::NotConfirmed(why)),
            Err(e) => Err(Unavailable::NotConfirmed(format!("read-back failed: {e}"))),
        }
    }

    /// A batch that did not land (or may have): everyone hears
    /// `Unavailable`, its grants leave the shared issuance, and the next
    /// batch re-reads the log first (counting whatever did land then).
    fn fail(&mut self, decided: Decided, cause: Unavailable) {
        tracing::warn!(partition = self.partition, error = %cause, "batch answered UNAVAILABLE");
        self.issuance.add(&decided.work.issued_reserved, -1);
        self.stale = true;
        self.reader = None;
        let unchanged = decided.unchanged.into_iter().map(|(tx, _)| tx);
        for tx in decided.waiting.into_iter().map(|(tx, _, _)| tx).chain(unchanged) {
            tx.send(Err(cause.clone().into()));
        }
    }

    /// Answer: the batch is durable in the log, so every caller hears its
    /// reply now; its statement entries (their positions known now) and
    /// idempotency records go into the work to commit.
    fn answer(&self, decided: Decided, offsets: &[u64]) -> Work {
        let Decided { mut work, records, waiting, unchanged, .. } = decided;
        let mut replies = Vec::with_capacity(records.len());
        for ((r, balances, b, _), &offset) in records.iter().zip(offsets) {
            let position = Position { partition: self.partition, offset };
            let touched = work.accounts.get_mut(&r.account).expect("a decided account is touched");
            Self::add_entries(touched, r, position, balances, &mut work.pages);
            let reply = Reply::for_record(r, position, *b);
            if !r.system {
                work.replies.push((r.account.clone(), r.request_id.clone(), r.fingerprint, reply.clone()));
            }
            replies.push(reply);
        }
        for (tx, i, replayed) in waiting {
            let mut reply = replies[i].clone();
            reply.replayed = replayed;
            tx.send(Ok(reply));
        }
        let last = Position { partition: self.partition, offset: *offsets.last().expect("a batch") };
        for (tx, reply) in unchanged {
            tx.send(Ok(Reply { position: last, ..reply }));
        }
        work
    }

    /// Adds a record's statement entries (with the balance after each
    /// event) to its account's pages; the pages it fills go to `pages`.
    pub(super) fn add_entries(
        touched: &mut Touched,
        record: &AccountRecord,
        position: Position,
        balances: &[Balance],
        pages: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        for (i, (event, balance)) in record.events.iter().zip(balances).enumerate() {
            let entry = projection::statement_entry(record, position, i as u16, event.clone(), balance);
            let at = EntryPlace { offset: position.offset, index: i as u16 };
            if let Some(page) = projection::push_entry(&mut touched.page, &record.account, at, entry) {
                pages.push(page);
            }
        }
    }

    /// An account as of the last committed batch, taken out of the cache
    /// (a batch that commits puts it back; one that fails leaves the store's).
    fn load(&mut self, key: &AccountKey) -> Result<Kept, store::StoreError> {
        if let Some(kept) = self.cache.remove(key) {
            return Ok(kept);
        }
        let (account, changed, page) = accounts::load_with_tail(&self.store, Cf::Accounts, key)?;
        let due = domain::due_at(&account, self.programme(key).as_deref());
        Ok(Kept { account, due, changed, page, recent: false })
    }

    pub(super) fn account<'w>(
        &mut self,
        work: &'w mut Work,
        key: &AccountKey,
    ) -> Result<&'w mut Touched, store::StoreError> {
        if !work.accounts.contains_key(key) {
            let Kept { account, due, changed, page, .. } = self.load(key)?;
            work.accounts.insert(key.clone(), Touched { due_before: due, due_after: due, account, changed, page });
        }
        Ok(work.accounts.get_mut(key).expect("just inserted"))
    }

    /// Folds accepted events into a touched account; returns its balance
    /// after each event, and after them all.
    pub(super) fn fold(touched: &mut Touched, events: &[domain::Event]) -> (Vec<Balance>, Balance) {
        let mut balances = Vec::with_capacity(events.len());
        for e in events {
            touched.account.apply(e);
            touched.changed.note(e);
            balances.push(Balance::of(&touched.account));
        }
        (balances, Balance::of(&touched.account))
    }

    /// Writes a batch's state (the writer's and the views') with the cursor
    /// it reflects, atomically, and tells the queries it is there.
    pub(super) fn commit(&mut self, mut work: Work) -> Result<(), store::StoreError> {
        let mut batch = Batch::default();
        let mut rows = Vec::new();
        for (key, t) in work.accounts.iter_mut().filter(|(_, t)| !t.changed.is_empty()) {
            projection::view_rows(key, &t.account, &t.changed, t.page.as_mut(), &mut rows);
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
        for (cf, k, v) in rows {
            batch.view_row(cf, k, v);
        }
        for (k, v) in std::mem::take(&mut work.pages) {
            batch.append_vec(Cf::Entries, k, v);
        }
        for (k, v) in std::mem::take(&mut work.levels_progress) {
            batch.put(Cf::Due, &k, &v);
        }
        self.evaluated_due(&work, &mut batch);
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
        for ((p, day), v) in issued.iter_mut() {
            *v += self.issued_in_partition(p, *day);
            batch.put(Cf::Issuance, &issued_key(self.partition, p, *day), &v.to_be_bytes());
        }
        for (account, request_id, fingerprint, reply) in &work.replies {
            batch.put_vec(
                Cf::Requests,
                store::request_key(account, request_id),
                request_row(self.log.shared(), *fingerprint, reply),
            );
        }
        for (at, why) in &work.quarantined {
            projection::quarantine(&mut batch, "writer", *at, why);
        }
        for (at, arbiter) in &work.arbiters {
            projection::note_arbiter(&mut batch, *at, arbiter);
        }
        store::put_cursor(&mut batch, self.partition, &self.cursor);
        self.store.write(batch)?;
        self.issued.extend(issued);
        self.issuance.add(&work.issued_folded, 1);
        let (p, next) = (self.partition as usize, self.cursor.next);
        self.positions.send_if_modified(|v| std::mem::replace(&mut v[p], next) != next);
        let arbiter = &self.cursor.arbiter;
        if self.owners.read().expect("owners lock")[p] != *arbiter {
            self.owners.write().expect("owners lock")[p] = arbiter.clone();
        }
        make_room(&mut self.cache, work.accounts.len(), self.config.cache_accounts_max);
        for (key, t) in work.accounts {
            let changed = t.changed.written(&t.account);
            self.cache.insert(key, Kept { account: t.account, due: t.due_after, changed, page: t.page, recent: true });
        }
        Ok(())
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        if !self.initial_catch_up(&rx) {
            return;
        }
        self.ownership.set_status(self.partition, FOLLOWING, None);
        loop {
            let wanted = self.ownership.wanted(self.partition);
            let status = self.ownership.status(self.partition);
            if status != READY {
                let generation = self.ownership.generation(self.partition);
                if wanted && (self.ownership.tried(self.partition) < generation || self.unowned()) {
                    self.take(generation);
                    continue;
                }
                if !self.follow(&mut rx) {
                    break;
                }
                continue;
            }
            if !wanted {
                self.release(&mut rx);
                continue;
            }
            let Some(first) = rx.blocking_recv() else { break };
            let mut msgs = vec![first];
            while msgs.len() < self.config.batch_commands_max {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            self.observed.batch_commands.count(msgs.len());
            self.observed.queue_commands.set(rx.len() as u64);
            if !self.process_or_stop(msgs) {
                return;
            }
        }
        tracing::info!(partition = self.partition, "writer stopped");
    }

    /// Folds the log from the stored cursor to its end, retrying while the
    /// log is unreachable. False when the writer was shut down meanwhile.
    fn initial_catch_up(&mut self, rx: &mpsc::Receiver<Msg>) -> bool {
        if !self.bulk_catch_up(rx) {
            return false;
        }
        loop {
            match self.log.end_offset(self.partition).map_err(anyhow::Error::from).and_then(|end| self.catch_up(end)) {
                Ok(folded) => {
                    tracing::info!(
                        partition = self.partition,
                        folded,
                        next = self.cursor.next,
                        "writer caught up with the log"
                    );
                    return true;
                }
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "writer cannot catch up with the log yet; retrying");
                    if rx.is_closed() {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(START_UP_RETRY_MS));
                }
            }
        }
    }

    /// Takes the partition, wanted under assignment `generation`: catches
    /// up and, on a shared log, claims it. A claim lost to a newer writer is
    /// not tried again under the same assignment.
    fn take(&mut self, generation: u64) {
        match self.start_up() {
            Ok(true) => {
                // Caught up and claimed: whatever an earlier failed append left is settled.
                self.stale = false;
                self.ownership.set_status(self.partition, READY, Some(generation));
            }
            Ok(false) => {
                tracing::warn!(partition = self.partition, "another writer claimed the partition first; following it");
                self.ownership.set_status(self.partition, FOLLOWING, Some(generation));
            }
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "cannot claim the partition yet; retrying");
                self.reader = None;
                std::thread::sleep(Duration::from_millis(START_UP_RETRY_MS));
            }
        }
    }

    /// Lets the partition go (it was revoked): no new commands are queued
    /// from now on, the ones queued already are decided, then the writer
    /// follows the partition.
    fn release(&mut self, rx: &mut mpsc::Receiver<Msg>) {
        self.ownership.set_status(self.partition, RELEASING, None);
        let mut left = rx.len();
        while left > 0 {
            let mut msgs = Vec::with_capacity(left.min(self.config.batch_commands_max));
            while msgs.len() < self.config.batch_commands_max && left > 0 {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => left = 0,
                }
                left = left.saturating_sub(1);
            }
            if !msgs.is_empty() && !self.process_or_stop(msgs) {
                return;
            }
        }
        self.release_marker();
        self.ownership.set_status(self.partition, FOLLOWING, None);
        tracing::info!(partition = self.partition, next = self.cursor.next, "released the partition");
    }

    /// Runs a batch; false when the writer must stop. A batch that fails
    /// outside its append (its state could not be read or committed, a
    /// log read it needed did not come) starts the writer over as a
    /// restart would: from its stored state, catching up with the log
    /// (which holds whatever was answered) and claiming the partition
    /// again. Its callers hear `UNAVAILABLE`, safe to retry.
    fn process_or_stop(&mut self, msgs: Vec<Msg>) -> bool {
        let Err(e) = self.process(msgs) else { return true };
        tracing::error!(partition = self.partition, error = %e, "batch failed; the writer starts over from its stored state");
        std::thread::sleep(Duration::from_millis(START_UP_RETRY_MS));
        match self.start_over() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(partition = self.partition, error = %e, "writer state cannot be read; writer stops");
                self.ownership.set_status(self.partition, FOLLOWING, Some(u64::MAX));
                false
            }
        }
    }

    /// Forgets everything not in the store (cache, cursor, the log
    /// reader, claims seen) and lets the run loop take the partition
    /// again under its current assignment.
    fn start_over(&mut self) -> Result<(), store::StoreError> {
        self.issued = super::issuance::load(&self.store, self.partition)?;
        self.cursor = store::read_cursor(&self.store, self.partition)?;
        self.cache.clear();
        self.reader = None;
        self.last_claim = None;
        self.own_claim = None;
        self.stale = false;
        let generation = self.ownership.generation(self.partition);
        // Not tried under this assignment yet: the run loop takes it again.
        self.ownership.set_status(self.partition, FOLLOWING, Some(generation.saturating_sub(1)));
        Ok(())
    }

    /// A partition another writer owns (or nobody here wants): answers what
    /// is queued with `Unavailable` and folds the other writer's records as
    /// they arrive, so this instance's views of it stay current. False once
    /// the queue is closed (shutdown).
    fn follow(&mut self, rx: &mut mpsc::Receiver<Msg>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(m) => Self::refuse(vec![m], &Unavailable::PartitionMoving(self.partition)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        if let Err(e) = self.follow_step(Duration::from_millis(FOLLOW_POLL_MS)) {
            tracing::warn!(partition = self.partition, error = %e, "cannot follow the partition's log; retrying");
            self.reader = None;
            std::thread::sleep(Duration::from_millis(START_UP_RETRY_MS));
        }
        true
    }

    /// Answers every caller in `msgs` with `Unavailable(cause)`.
    fn refuse(msgs: Vec<Msg>, cause: &Unavailable) {
        for m in msgs {
            match m {
                Msg::Submit(_, tx) => {
                    tx.send(Err(cause.clone().into()));
                }
                Msg::Preview(_, tx) => {
                    let _ = tx.send(Err(cause.clone().into()));
                }
                Msg::Tick(done) => drop(done),
                Msg::Wake => {}
            }
        }
    }

    fn record(
        &self,
        cmd: Command,
        programme_version: u64,
        fingerprint: u64,
        now: Millis,
        events: Vec<domain::Event>,
        cap_mode: CapMode,
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
            cap_mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(recent: bool) -> Kept {
        Kept { account: Account::default(), due: None, changed: Default::default(), page: None, recent }
    }

    fn key(i: usize) -> AccountKey {
        AccountKey::new("t", "p", &format!("m{i}"))
    }

    #[test]
    fn a_full_cache_keeps_the_accounts_used_since_it_last_made_room() {
        let mut cache = FastMap::default();
        for i in 0..100 {
            cache.insert(key(i), kept(i % 4 == 0));
        }
        make_room(&mut cache, 0, 100);
        assert_eq!(cache.len(), 100, "not over: nothing goes");

        make_room(&mut cache, 10, 100);
        assert_eq!(cache.len(), 65, "down to 75 % with the 10 coming");
        assert!((0..100).step_by(4).all(|i| cache.contains_key(&key(i))), "the recent ones stay");
        assert!(cache.values().all(|k| !k.recent), "and lose their mark");

        // Nothing recent now: any go, as many as needed.
        for i in 100..140 {
            cache.insert(key(i), kept(true));
        }
        make_room(&mut cache, 0, 100);
        assert_eq!(cache.len(), 75);
        assert!((100..140).all(|i| cache.contains_key(&key(i))));
    }
}
