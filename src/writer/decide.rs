//! Decide: each command of a batch against the state the earlier ones
//! left; retries answered from the idempotency records.

use super::commit::Work;
use super::issuance::{earned_in, Granted};
use super::partition::PartitionWriter;
use super::shares::ShareDecision;
use super::{PreviewTx, ReplyTx, Unavailable, WriteError};
use crate::domain::{self, AccountKey, Command, CommandBody, Millis};
use crate::log::codec;
use crate::log::record::{AccountRecord, Balance, CapMode, PartitionRecord, Position, Reply};
use crate::store::{self, accounts, snapshot, Batch, Cf};
use crate::FastMap;

/// Times an earn under a programme-wide cap is decided again because
/// another partition counted against the cap in between, at most.
const CAP_DECIDE_ATTEMPTS_MAX: usize = 64;

/// A batch as decided: the records to append, in order, and who waits for
/// which.
pub(super) struct Decided {
    pub(super) work: Work,
    /// Each record with the account's balance right after each of its
    /// events, and after it.
    pub(super) records: Vec<(AccountRecord, Vec<Balance>, Balance, Vec<u8>)>,
    /// (caller, index of its record, whether it repeats an earlier command
    /// of this batch).
    pub(super) waiting: Vec<(ReplyTx, usize, bool)>,
    /// (account, request id) → (fingerprint, record index) of this batch.
    pub(super) in_batch: FastMap<(AccountKey, String), (u64, usize)>,
    /// Accepted commands that changed nothing (an `Expire` with nothing
    /// due): no record, answered with the account as the batch leaves it
    /// once the batch's records are durable.
    pub(super) unchanged: Vec<(ReplyTx, Reply)>,
    /// Accounts whose scheduled settlement failed: set aside for a while.
    pub(super) set_aside: Vec<AccountKey>,
}

impl PartitionWriter {
    /// Decide: each command against the state the earlier ones left; retries
    /// and reused request ids are answered on the way.
    pub(super) fn decide(
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
        // At most an account a command: sized once rather than grown (and
        // every account in it moved) as the batch meets them.
        d.work.accounts.reserve(commands.len());
        // The idempotency records of the callers' commands, read together
        // (one lookup of many keys shares the work of finding them; only this
        // writer writes them, at commit).
        let keys: Vec<Vec<u8>> = commands
            .iter()
            .filter(|(_, tx)| tx.is_some())
            .map(|(cmd, _)| store::request_key(&cmd.account, &cmd.request_id))
            .collect();
        let mut stored = self.store.multi_get(Cf::Requests, &keys)?.into_iter();
        for (cmd, tx) in commands {
            let fingerprint = domain::fingerprint(&cmd);
            // Callers' commands are idempotent; the writer's own have no id.
            let tx = match tx {
                None => None,
                Some(tx) => match self.seen_before(
                    &mut d,
                    &cmd,
                    stored.next().expect("a row looked up per caller's command"),
                    fingerprint,
                    tx,
                )? {
                    Some(tx) => Some(tx),
                    None => continue,
                },
            };
            self.decide_command(&mut d, cmd, tx, fingerprint, now)?;
        }
        Ok(d)
    }

    /// A caller's command whose request id this batch or the idempotency
    /// records already hold (`stored`: its row there) is answered here (its
    /// original answer, or `RequestIdReused`); a new one gets its sender back.
    fn seen_before(
        &self,
        d: &mut Decided,
        cmd: &Command,
        stored: Option<Vec<u8>>,
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
        let Some(bytes) = stored else {
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
    /// (the cache's, decoded or as a row, or the store's), answered with its
    /// events; nothing is kept or written.
    pub(super) fn preview(
        &mut self,
        previews: Vec<(Command, PreviewTx)>,
        now: Millis,
    ) -> Result<(), store::StoreError> {
        for (cmd, tx) in previews {
            let programme = self.programme(&cmd.account);
            let stored;
            let account = match self.cache.get(&cmd.account) {
                Some(kept) => &kept.account,
                None => {
                    stored = match self.cache.read_row(&cmd.account) {
                        Some(account) => account,
                        None => accounts::load_with_tail(&self.store, Cf::Accounts, &cmd.account)?.0,
                    };
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

    /// Scheduled settlements that failed (their record would not fit, or the
    /// decision refused) are set aside for [`WriterConfig::tick_set_aside_ms`],
    /// so the rest of the due index moves on instead of retrying them every
    /// tick.
    pub(super) fn set_aside(&mut self, d: &mut Decided, now: Millis) -> Result<(), store::StoreError> {
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
}
