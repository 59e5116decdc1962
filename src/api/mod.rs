//! The gRPC boundary, and the only module that knows tonic. It validates
//! requests into domain commands, hands them to the writers, maps every
//! outcome to a status, and answers queries from the views.

mod auth;
pub mod errors;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

pub use auth::{Access, Auth};
use errors::{internal, invalid, status};

use crate::codec::{self, hex};
use crate::domain::{self, calendar, Account, AccountKey, Command, CommandBody, ProgrammeKey};
use crate::programmes::Programmes;
use crate::projector::{entry_key, parse_expiring_key};
use crate::proto as pb;
use crate::record::partition_for;
use crate::store::{self, Cf, Db};
use crate::writer::{Clock, Writers};

pub const ENTRIES_PAGE_SIZE_MAX: u32 = 500;
/// Longest time range one `ListAlerts` call covers.
pub const ALERTS_RANGE_DAYS_MAX: i64 = 92;
/// Programme days `ListAlerts` covers when the caller names no range:
/// today and the six before, in the programme's time zone.
pub const ALERTS_DEFAULT_DAYS: i64 = 7;
/// Most days one `GetIssuance` call returns.
pub const ISSUANCE_DAYS_MAX: i64 = 366;
/// Statement rows one `ListLevelChanges` page reads at most.
pub const LEVEL_CHANGES_SCAN_ROWS_MAX: usize = 10_000;
pub const ENTRIES_PAGE_SIZE_DEFAULT: u32 = 100;
pub const EXPIRING_PAGE_SIZE_MAX: u32 = 1000;
pub const EXPIRING_WITHIN_DAYS_MAX: i32 = 3650;
/// Longest a query waits for its view to reach `min_position`.
pub const QUERY_WAIT_MS_MAX: u64 = 5_000;
/// Events folded at most to answer `GetAccount.as_of`.
pub const AS_OF_EVENTS_MAX: usize = 100_000;

/// What the services share.
pub struct Ledger {
    pub writers: Arc<Writers>,
    /// The reconciliation consumer's books.
    pub books: Arc<Db>,
    pub programmes: Arc<Programmes>,
    pub views: Arc<Db>,
    pub positions: watch::Receiver<Vec<u64>>,
    pub clock: Arc<dyn Clock>,
    pub auth: Auth,
}

impl Ledger {
    async fn command(&self, command: Command) -> Result<Response<pb::CommandReply>, Status> {
        let reply = self.writers.submit(command).await?;
        Ok(Response::new(codec::reply_to_pb(reply)))
    }

    /// Freezes (or, with `freeze` false, unfreezes) earning and/or spending.
    async fn freeze(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        r: &pb::FreezeAccountRequest,
        freeze: bool,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let account = validate::account(&r.account)?;
        self.auth.check(metadata, &account.tenant_id, Access::Admin)?;
        if !r.earning && !r.spending {
            return Err(invalid("earning", "name earning, spending or both"));
        }
        let (earning, spending) = (r.earning, r.spending);
        let operator = validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?;
        let reason = validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?;
        let body = if freeze {
            CommandBody::Freeze { earning, spending, operator, reason }
        } else {
            CommandBody::Unfreeze { earning, spending, operator, reason }
        };
        let request_id = validate::request_id(&r.request_id)?;
        self.command(Command { request_id, account, body, context: Default::default() }).await
    }

    fn programme(&self, key: &ProgrammeKey) -> Result<Arc<domain::Programme>, Status> {
        self.programmes.registry().read().expect("registry lock").current(key).ok_or_else(|| {
            status(
                Code::NotFound,
                "PROGRAMME_NOT_FOUND",
                format!("programme {}/{} is not configured", key.tenant_id, key.programme_id),
                Some("programme_id"),
            )
        })
    }

    /// Waits (bounded) until the views of `min`'s partition have folded it.
    async fn wait_for(&self, account: &AccountKey, min: Option<&pb::LogPosition>) -> Result<(), Status> {
        let Some(min) = min else { return Ok(()) };
        let p = partition_for(account, self.writers.partitions());
        if min.partition != p {
            return Err(invalid("min_position.partition", format!("this account's events are in partition {p}")));
        }
        let mut rx = self.positions.clone();
        let reached = tokio::time::timeout(
            Duration::from_millis(QUERY_WAIT_MS_MAX),
            rx.wait_for(|v| v.get(p as usize).is_some_and(|next| *next > min.offset)),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(status(
                Code::Unavailable,
                "VIEW_BEHIND",
                format!(
                    "the view has not reached offset {} of partition {p} within {QUERY_WAIT_MS_MAX} ms",
                    min.offset
                ),
                None,
            )),
        }
    }

    fn view_position(&self, account: &AccountKey) -> pb::LogPosition {
        let p = partition_for(account, self.writers.partitions());
        let next = self.positions.borrow().get(p as usize).copied().unwrap_or(0);
        pb::LogPosition { partition: p, offset: next.saturating_sub(1) }
    }

    fn load_view(&self, key: &AccountKey) -> Result<Account, Status> {
        crate::accounts::load(&self.views, Cf::Accounts, key).map(|(a, _)| a).map_err(internal)
    }

    /// The account as of an instant, folded from its statement.
    fn account_as_of(&self, key: &AccountKey, as_of: domain::Millis) -> Result<Account, Status> {
        let prefix = store::account_key(key);
        let rows = self.views.scan(Cf::Entries, &prefix, &prefix, AS_OF_EVENTS_MAX).map_err(internal)?;
        let mut account = Account::default();
        for (_, v) in rows {
            let entry: pb::Entry = prost::Message::decode(v.as_slice()).map_err(internal)?;
            let at = entry.at.as_ref().and_then(codec::millis).unwrap_or(0);
            if at > as_of {
                break;
            }
            let event =
                codec::event_from_pb(entry.event.ok_or_else(|| internal("entry without event"))?).map_err(internal)?;
            account.apply(&event);
        }
        Ok(account)
    }
}

/// The first statement key a page starts at: the account's first, or the
/// one after the last key a previous page returned (its token).
fn entries_from_token(key: &AccountKey, token: &str) -> Result<Vec<u8>, Status> {
    if token.is_empty() {
        return Ok(store::account_key(key));
    }
    let after = unhex("page_token", token)?;
    if after.len() != 10 {
        return Err(invalid("page_token", "not a token this service issued"));
    }
    let offset = u64::from_be_bytes(after[..8].try_into().expect("8 bytes"));
    let index = u16::from_be_bytes(after[8..].try_into().expect("2 bytes"));
    Ok(match index.checked_add(1) {
        Some(i) => entry_key(key, offset, i),
        None => entry_key(key, offset + 1, 0),
    })
}

/// A request's `page_size`: 0 means the default, more than the maximum is refused.
fn page_size(n: u32) -> Result<usize, Status> {
    match n {
        0 => Ok(ENTRIES_PAGE_SIZE_DEFAULT as usize),
        n if n <= ENTRIES_PAGE_SIZE_MAX => Ok(n as usize),
        _ => Err(invalid("page_size", format!("must be at most {ENTRIES_PAGE_SIZE_MAX}"))),
    }
}

fn level_status_to_pb(programme: &domain::Programme, s: domain::LevelStatus) -> pb::LevelStatus {
    pb::LevelStatus {
        level: s.level,
        growth_in_window: s.growth_in_window,
        window_days: programme.level_window_days as i32,
        next_evaluation: s.next_evaluation.map(codec::timestamp),
        growth_to_keep: s.growth_to_keep,
        next_level: s.next_level,
        growth_to_next: s.growth_to_next,
    }
}

fn account_to_pb(key: &AccountKey, a: &Account, level: pb::LevelStatus, position: pb::LogPosition) -> pb::Account {
    let mut lots: Vec<pb::Lot> = a
        .lots_fefo()
        .into_iter()
        .map(|(id, l)| pb::Lot {
            lot_id: id.clone(),
            remaining: l.remaining,
            expires_at: l.expires_at.map(codec::timestamp),
        })
        .collect();
    lots.retain(|l| l.remaining > 0);
    pb::Account {
        account: Some(codec::account_key_to_pb(key)),
        available: a.available(),
        reserved: a.reserved(),
        debt: a.debt,
        growth: a.growth,
        level: level.level.clone(),
        level_status: Some(level),
        earning_frozen: a.earning_frozen,
        spending_frozen: a.spending_frozen,
        lots,
        position: Some(position),
        reservations: a
            .reservations
            .iter()
            .filter(|(_, r)| r.status == domain::ReservationStatus::Open)
            .map(|(id, r)| pb::Reservation {
                reservation_id: id.clone(),
                order_ref: r.order_ref.clone(),
                points: r.held(),
                expires_at: Some(codec::timestamp(r.expires_at)),
            })
            .collect(),
    }
}

fn unhex(field: &str, s: &str) -> Result<Vec<u8>, Status> {
    if !s.len().is_multiple_of(2) || s.len() > 1024 {
        return Err(invalid(field, "not a token this service issued"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| invalid(field, "not a token this service issued")))
        .collect()
}

/// Most commands one `SubmitBatch` call carries.
pub const SUBMIT_BATCH_COMMANDS_MAX: usize = 1000;

/// The fields every command request has.
struct Common<'a> {
    account: &'a Option<pb::AccountKey>,
    request_id: &'a str,
    metadata: &'a std::collections::BTreeMap<String, String>,
    client_ip: &'a str,
    device_id: &'a str,
}

/// A command request: its common fields, the access it needs, its body.
trait CommandRequest {
    fn access(&self) -> Access;
    fn common(&self) -> Common<'_>;
    fn body(&self) -> Result<CommandBody, Status>;
}

macro_rules! command_request {
    ($t:ty, $access:expr, |$r:ident| $body:expr) => {
        command_request!($t, |_r| $access, |$r| $body);
    };
    ($t:ty, |$a:ident| $access:expr, |$r:ident| $body:expr) => {
        impl CommandRequest for $t {
            fn access(&self) -> Access {
                let $a = self;
                $access
            }
            fn common(&self) -> Common<'_> {
                Common {
                    account: &self.account,
                    request_id: &self.request_id,
                    metadata: &self.metadata,
                    client_ip: &self.client_ip,
                    device_id: &self.device_id,
                }
            }
            fn body(&self) -> Result<CommandBody, Status> {
                let $r = self;
                Ok($body)
            }
        }
    };
}

command_request!(pb::EarnRequest, Access::Member, |r| CommandBody::Earn {
    points: validate::positive("points", r.points)?,
    reason: validate::id("reason", &r.reason)?,
    order_ref: validate::order_ref(r.order_ref.as_ref())?,
    growth: validate::growth(r.growth)?,
    expires_at: r.expires_at.as_ref().map(|t| validate::instant("expires_at", t)).transpose()?,
});

command_request!(pb::SpendRequest, Access::Member, |r| CommandBody::Spend {
    points: validate::positive("points", r.points)?,
    order_ref: validate::order_ref(r.order_ref.as_ref())?,
    order_cash_amount: r.order_cash_amount.map(|c| validate::positive("order_cash_amount", c)).transpose()?,
});

command_request!(pb::ReserveRequest, Access::Member, |r| CommandBody::Reserve {
    points: validate::positive("points", r.points)?,
    order_ref: validate::text("order_ref", &r.order_ref, validate::ORDER_REF_CHARS_MAX, true)?,
    timeout_seconds: match r.timeout_seconds {
        t if (1..=domain::RESERVATION_TIMEOUT_SECONDS_MAX).contains(&t) => t,
        _ => {
            return Err(invalid("timeout_seconds", format!("must be 1..={}", domain::RESERVATION_TIMEOUT_SECONDS_MAX)));
        }
    },
    order_cash_amount: r.order_cash_amount.map(|c| validate::positive("order_cash_amount", c)).transpose()?,
});

command_request!(pb::CaptureReservationRequest, Access::Member, |r| CommandBody::Capture {
    reservation_id: validate::request_id(&r.reservation_id)
        .map_err(|_| invalid("reservation_id", "must be 1..128 characters"))?,
    points: r.points.map(|p| validate::positive("points", p)).transpose()?,
});

command_request!(pb::ReleaseReservationRequest, Access::Member, |r| CommandBody::Release {
    reservation_id: validate::request_id(&r.reservation_id)
        .map_err(|_| invalid("reservation_id", "must be 1..128 characters"))?,
});

command_request!(pb::RefundRequest, Access::Member, |r| CommandBody::Refund {
    spend_id: validate::request_id(&r.spend_request_id)
        .map_err(|_| invalid("spend_request_id", "must be 1..128 characters"))?,
    points: validate::positive("points", r.points)?,
});

command_request!(pb::ReverseEarnRequest, Access::Member, |r| CommandBody::ReverseEarn {
    earn_id: validate::request_id(&r.earn_request_id)
        .map_err(|_| invalid("earn_request_id", "must be 1..128 characters"))?,
    points: validate::positive("points", r.points)?,
    growth: validate::growth(r.growth)?,
});

// Expiring due lots is a business call; recycling every point of an
// account (a blacklisted member) is a back-office act: admin and operator.
command_request!(
    pb::ExpireRequest,
    |r| if r.all_points { Access::Admin } else { Access::Member },
    |r| CommandBody::Expire {
        all_points: r.all_points,
        reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, r.all_points)?,
        operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, r.all_points)?,
    }
);

command_request!(pb::AdjustRequest, Access::Admin, |r| CommandBody::Adjust {
    points: match r.points {
        0 | i64::MIN => return Err(invalid("points", "must be non-zero (and > i64::MIN)")),
        p => p,
    },
    operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?,
    reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?,
});

impl Ledger {
    /// Validates a command request fully (and checks access) into a command.
    fn build<R: CommandRequest>(&self, metadata: &tonic::metadata::MetadataMap, r: &R) -> Result<Command, Status> {
        let c = r.common();
        let account = validate::account(c.account)?;
        self.auth.check(metadata, &account.tenant_id, r.access())?;
        let request_id = validate::request_id(c.request_id)?;
        let context = validate::context(c.metadata, c.client_ip, c.device_id)?;
        let body = r.body()?;
        Ok(Command { request_id, account, body, context })
    }

    async fn unary<R: CommandRequest>(&self, req: Request<R>) -> Result<Response<pb::CommandReply>, Status> {
        let command = self.build(req.metadata(), req.get_ref())?;
        self.command(command).await
    }

    fn build_batched(&self, metadata: &tonic::metadata::MetadataMap, c: &pb::BatchCommand) -> Result<Command, Status> {
        use pb::batch_command::Command as C;
        match c.command.as_ref().ok_or_else(|| invalid("command", "is required"))? {
            C::Earn(r) => self.build(metadata, r),
            C::Spend(r) => self.build(metadata, r),
            C::Reserve(r) => self.build(metadata, r),
            C::CaptureReservation(r) => self.build(metadata, r),
            C::ReleaseReservation(r) => self.build(metadata, r),
            C::Refund(r) => self.build(metadata, r),
            C::ReverseEarn(r) => self.build(metadata, r),
            C::Expire(r) => self.build(metadata, r),
            C::Adjust(r) => self.build(metadata, r),
        }
    }
}

fn command_error(s: Status) -> pb::CommandError {
    use tonic_types::StatusExt;
    let details = s.get_error_details();
    pb::CommandError {
        code: s.code() as i32,
        message: s.message().to_string(),
        reason: details.error_info().map(|i| i.reason.clone()).unwrap_or_default(),
        field: details
            .bad_request()
            .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
            .unwrap_or_default(),
    }
}

#[derive(Clone)]
pub struct LedgerService(pub Arc<Ledger>);

#[tonic::async_trait]
impl pb::points_ledger_server::PointsLedger for LedgerService {
    async fn earn(&self, req: Request<pb::EarnRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn spend(&self, req: Request<pb::SpendRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn reserve(&self, req: Request<pb::ReserveRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn capture_reservation(
        &self,
        req: Request<pb::CaptureReservationRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn release_reservation(
        &self,
        req: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn refund(&self, req: Request<pb::RefundRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn reverse_earn(&self, req: Request<pb::ReverseEarnRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn expire(&self, req: Request<pb::ExpireRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn adjust(&self, req: Request<pb::AdjustRequest>) -> Result<Response<pb::CommandReply>, Status> {
        self.0.unary(req).await
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let commands = &req.get_ref().commands;
        if commands.is_empty() || commands.len() > SUBMIT_BATCH_COMMANDS_MAX {
            return Err(invalid("commands", format!("must hold 1..={SUBMIT_BATCH_COMMANDS_MAX} commands")));
        }
        // Every command is validated on its own; the valid ones go to their
        // writers in order, all before any answer is awaited (each partition
        // decides its share in group commits), and each gets its own answer.
        let mut valid = Vec::with_capacity(commands.len());
        let built: Vec<Result<(), Status>> =
            commands.iter().map(|c| self.0.build_batched(req.metadata(), c).map(|cmd| valid.push(cmd))).collect();
        let mut answers = self.0.writers.submit_all(valid).await.into_iter();
        let results = built
            .into_iter()
            .map(|b| {
                let answer =
                    b.and_then(|()| answers.next().expect("one answer per valid command").map_err(Status::from));
                pb::BatchResult {
                    result: Some(match answer {
                        Ok(reply) => pb::batch_result::Result::Reply(codec::reply_to_pb(reply)),
                        Err(s) => pb::batch_result::Result::Error(command_error(s)),
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::SubmitBatchResponse { results }))
    }

    async fn get_account(&self, req: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let r = req.get_ref();
        let key = validate::account(&r.account)?;
        self.0.auth.check(req.metadata(), &key.tenant_id, Access::Member)?;
        let programme = self.0.programme(&key.programme())?;
        self.0.wait_for(&key, r.min_position.as_ref()).await?;
        let position = self.0.view_position(&key);
        let account = match &r.as_of {
            Some(t) => self.0.account_as_of(&key, validate::instant("as_of", t)?)?,
            None => self.0.load_view(&key)?,
        };
        let level = level_status_to_pb(&programme, domain::level_status(&programme, &account));
        Ok(Response::new(account_to_pb(&key, &account, level, position)))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = req.get_ref();
        let key = validate::account(&r.account)?;
        self.0.auth.check(req.metadata(), &key.tenant_id, Access::Member)?;
        self.0.programme(&key.programme())?;
        let size = page_size(r.page_size)?;
        self.0.wait_for(&key, r.min_position.as_ref()).await?;
        let prefix = store::account_key(&key);
        let start = entries_from_token(&key, &r.page_token)?;
        let rows = self.0.views.scan(Cf::Entries, &prefix, &start, size + 1).map_err(internal)?;
        let more = rows.len() > size;
        let mut entries = Vec::with_capacity(size);
        let mut last = Vec::new();
        for (k, v) in rows.into_iter().take(size) {
            entries.push(prost::Message::decode(v.as_slice()).map_err(internal)?);
            last = k[prefix.len()..].to_vec();
        }
        let next_page_token = if more { hex(&last) } else { String::new() };
        Ok(Response::new(pb::ListEntriesResponse { entries, next_page_token }))
    }

    async fn list_level_changes(
        &self,
        req: Request<pb::ListLevelChangesRequest>,
    ) -> Result<Response<pb::ListLevelChangesResponse>, Status> {
        let r = req.get_ref();
        let key = validate::account(&r.account)?;
        self.0.auth.check(req.metadata(), &key.tenant_id, Access::Member)?;
        self.0.programme(&key.programme())?;
        let size = page_size(r.page_size)?;
        self.0.wait_for(&key, r.min_position.as_ref()).await?;
        let prefix = store::account_key(&key);
        let mut start = entries_from_token(&key, &r.page_token)?;
        let mut changes = Vec::new();
        let mut scanned = 0;
        let mut last: Option<Vec<u8>> = None;
        let mut exhausted = false;
        // Level changes are rare among a member's events: read the statement
        // in chunks, at most LEVEL_CHANGES_SCAN_ROWS_MAX rows per page.
        while changes.len() < size && scanned < LEVEL_CHANGES_SCAN_ROWS_MAX {
            let rows =
                self.0.views.scan(Cf::Entries, &prefix, &start, ENTRIES_PAGE_SIZE_MAX as usize).map_err(internal)?;
            let chunk_was_full = rows.len() == ENTRIES_PAGE_SIZE_MAX as usize;
            for (k, v) in rows {
                scanned += 1;
                let entry: pb::Entry = prost::Message::decode(v.as_slice()).map_err(internal)?;
                if let Some(pb::ledger_event::Event::LevelChanged(c)) = entry.event.and_then(|e| e.event) {
                    changes.push(pb::LevelChange {
                        from: c.from,
                        to: c.to,
                        growth: c.growth,
                        why: c.why,
                        at: entry.at,
                        position: entry.position,
                    });
                }
                start = k.clone();
                start.push(0);
                last = Some(k[prefix.len()..].to_vec());
                if changes.len() == size {
                    break;
                }
            }
            if !chunk_was_full && changes.len() < size {
                exhausted = true;
                break;
            }
        }
        let next_page_token = match last {
            Some(l) if !exhausted => hex(&l),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListLevelChangesResponse { changes, next_page_token }))
    }

    async fn list_expiring(
        &self,
        req: Request<pb::ListExpiringRequest>,
    ) -> Result<Response<pb::ListExpiringResponse>, Status> {
        let r = req.get_ref();
        let tenant = validate::id("tenant_id", &r.tenant_id)?;
        let programme_id = validate::id("programme_id", &r.programme_id)?;
        self.0.auth.check(req.metadata(), &tenant, Access::Member)?;
        let programme =
            self.0.programme(&ProgrammeKey { tenant_id: tenant.clone(), programme_id: programme_id.clone() })?;
        let days = match r.within_days {
            0 if programme.reminder_days > 0 => programme.reminder_days as i32,
            0 => 15,
            d if (1..=EXPIRING_WITHIN_DAYS_MAX).contains(&d) => d,
            _ => {
                return Err(invalid(
                    "within_days",
                    format!("must be 0 (the programme's reminder window) ..= {EXPIRING_WITHIN_DAYS_MAX}"),
                ))
            }
        };
        let size = match r.page_size {
            0 => ENTRIES_PAGE_SIZE_DEFAULT,
            n if n <= EXPIRING_PAGE_SIZE_MAX => n,
            _ => return Err(invalid("page_size", format!("must be at most {EXPIRING_PAGE_SIZE_MAX}"))),
        } as usize;
        let now = self.0.clock.now();
        let until = calendar::add_days(now, i64::from(days));
        let prefix = store::programme_prefix(&tenant, &programme_id);
        let start = if r.page_token.is_empty() {
            let mut s = prefix.clone();
            s.extend_from_slice(&store::millis_key(now.saturating_add(1)));
            s
        } else {
            let mut s = prefix.clone();
            s.extend_from_slice(&unhex("page_token", &r.page_token)?);
            s.push(0); // strictly after the last key returned
            s
        };
        let rows = self.0.views.scan(Cf::Expiring, &prefix, &start, size + 1).map_err(internal)?;
        let mut lots = Vec::new();
        let mut last = Vec::new();
        let mut more = false;
        for (k, v) in rows {
            let (member, at, lot_id) =
                parse_expiring_key(prefix.len(), &k).ok_or_else(|| internal("bad expiring key"))?;
            if at > until {
                break;
            }
            if lots.len() == size {
                more = true;
                break;
            }
            lots.push(pb::ExpiringLot {
                account: Some(pb::AccountKey {
                    tenant_id: tenant.clone(),
                    programme_id: programme_id.clone(),
                    member_id: member,
                }),
                lot_id,
                points: i64::from_be_bytes(v[..8].try_into().map_err(internal)?),
                expires_at: Some(codec::timestamp(at)),
            });
            last = k[prefix.len()..].to_vec();
        }
        let next_page_token = if more { hex(&last) } else { String::new() };
        Ok(Response::new(pb::ListExpiringResponse { lots, next_page_token }))
    }
}

#[derive(Clone)]
pub struct AdminService(pub Arc<Ledger>);

#[tonic::async_trait]
impl pb::programme_admin_server::ProgrammeAdmin for AdminService {
    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let r = req.get_ref();
        let key = ProgrammeKey {
            tenant_id: validate::id("tenant_id", &r.tenant_id)?,
            programme_id: validate::id("programme_id", &r.programme_id)?,
        };
        self.0.auth.check(req.metadata(), &key.tenant_id, Access::Admin)?;
        let programme = self.0.programme(&key)?;
        // Without a range: up to now, from the start of the programme day
        // ALERTS_DEFAULT_DAYS - 1 days before the range's last day.
        let to = match &r.to {
            Some(t) => validate::instant("to", t)?,
            None => self.0.clock.now().saturating_add(1),
        };
        let from = match &r.from {
            Some(t) => validate::instant("from", t)?,
            None => {
                let last_day = calendar::programme_day(programme.time_zone, to.saturating_sub(1));
                calendar::day_to_date(last_day - (ALERTS_DEFAULT_DAYS - 1))
                    .and_then(|d| calendar::start_of_day(programme.time_zone, d))
                    .ok_or_else(|| invalid("to", "out of range"))?
            }
        };
        if to <= from || to - from > ALERTS_RANGE_DAYS_MAX * 86_400_000 {
            return Err(invalid("to", format!("must be after from, at most {ALERTS_RANGE_DAYS_MAX} days later")));
        }
        let size = page_size(r.page_size)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(
                String::from_utf8(unhex("page_token", &r.page_token)?)
                    .map_err(|_| invalid("page_token", "not a token this service issued"))?,
            )
        };
        let sort_key = |a: &pb::Alert| {
            let t = a.at.as_ref().map(|t| (t.seconds, t.nanos)).unwrap_or_default();
            format!("{:020}.{:09}/{}/{}", t.0, t.1, a.rule, a.subject)
        };
        let all = crate::risk::alerts(&self.0.books, &programme, from, to).map_err(internal)?;
        let mut alerts: Vec<pb::Alert> =
            all.into_iter().filter(|a| after.as_ref().is_none_or(|t| sort_key(a) > *t)).take(size + 1).collect();
        let more = alerts.len() > size;
        alerts.truncate(size);
        let next_page_token = match alerts.last() {
            Some(a) if more => hex(sort_key(a).as_bytes()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAlertsResponse { alerts, next_page_token }))
    }

    async fn get_account_risk(
        &self,
        req: Request<pb::GetAccountRiskRequest>,
    ) -> Result<Response<pb::AccountRisk>, Status> {
        let r = req.get_ref();
        let key = validate::account(&r.account)?;
        self.0.auth.check(req.metadata(), &key.tenant_id, Access::Admin)?;
        self.0.programme(&key.programme())?;
        let state = crate::risk::account_risk(&self.0.books, &key).map_err(internal)?.unwrap_or_default();
        let date = |day: i64| calendar::day_to_date(day).map(|d| d.to_string()).unwrap_or_default();
        let mut out = pb::AccountRisk {
            account: r.account.clone(),
            date: date(state.day),
            earned: state.earned,
            spent: state.spent,
            commands: state.commands,
        };
        if !r.date.is_empty() {
            let asked = chrono::NaiveDate::parse_from_str(&r.date, "%Y-%m-%d")
                .map_err(|_| invalid("date", format!("'{}' is not a date YYYY-MM-DD", r.date)))?;
            if asked.to_string() != out.date {
                // The view keeps the member's latest day; any other day had
                // no records after it, or is gone: nothing to show.
                out = pb::AccountRisk { account: r.account.clone(), date: asked.to_string(), ..Default::default() };
            }
        }
        Ok(Response::new(out))
    }

    async fn get_issuance(
        &self,
        req: Request<pb::GetIssuanceRequest>,
    ) -> Result<Response<pb::GetIssuanceResponse>, Status> {
        let r = req.get_ref();
        let key = ProgrammeKey {
            tenant_id: validate::id("tenant_id", &r.tenant_id)?,
            programme_id: validate::id("programme_id", &r.programme_id)?,
        };
        self.0.auth.check(req.metadata(), &key.tenant_id, Access::Admin)?;
        self.0.programme(&key)?;
        let parse = |field: &str, v: &str| {
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map_err(|_| invalid(field, format!("'{v}' is not a date YYYY-MM-DD")))
        };
        let (from, to) = (parse("from_date", &r.from_date)?, parse("to_date", &r.to_date)?);
        if to < from || (to - from).num_days() >= ISSUANCE_DAYS_MAX {
            return Err(invalid("to_date", format!("must be on or after from_date, at most {ISSUANCE_DAYS_MAX} days")));
        }
        let mut days = Vec::new();
        let mut d = from;
        while d <= to {
            let issued = crate::risk::issuance(&self.0.books, &key, calendar::days_since_epoch(d)).map_err(internal)?;
            days.push(pb::DayIssuance { date: d.to_string(), issued });
            d = d.succ_opt().ok_or_else(|| invalid("to_date", "out of range"))?;
        }
        Ok(Response::new(pb::GetIssuanceResponse { days }))
    }

    async fn configure_programme(
        &self,
        req: Request<pb::ConfigureProgrammeRequest>,
    ) -> Result<Response<pb::ConfigureProgrammeReply>, Status> {
        let r = req.get_ref();
        let input = r.programme.as_ref().ok_or_else(|| invalid("programme", "is required"))?;
        let programme = codec::programme_from_pb(input)?;
        self.0.auth.check(req.metadata(), &programme.tenant_id, Access::Admin)?;
        let request_id = validate::request_id(&r.request_id)?;
        let operator = validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?;
        let fingerprint = domain::fingerprint_programme(&programme, &operator);
        let (programmes, now) = (self.0.programmes.clone(), self.0.clock.now());
        let (stored, position, replayed) = tokio::task::spawn_blocking(move || {
            programmes.configure(&request_id, &operator, programme, fingerprint, now)
        })
        .await
        .map_err(internal)??;
        Ok(Response::new(pb::ConfigureProgrammeReply {
            request_id: r.request_id.clone(),
            replayed,
            programme: Some(codec::programme_to_pb(&stored)),
            position: Some(codec::position_to_pb(position)),
        }))
    }

    async fn get_programme(&self, req: Request<pb::GetProgrammeRequest>) -> Result<Response<pb::Programme>, Status> {
        let r = req.get_ref();
        let key = ProgrammeKey {
            tenant_id: validate::id("tenant_id", &r.tenant_id)?,
            programme_id: validate::id("programme_id", &r.programme_id)?,
        };
        self.0.auth.check(req.metadata(), &key.tenant_id, Access::Member)?;
        let found = {
            let reg = self.0.programmes.registry();
            let reg = reg.read().expect("registry lock");
            if r.version == 0 {
                reg.current(&key)
            } else {
                reg.version(&key, r.version)
            }
        };
        let p = found.ok_or_else(|| {
            status(
                Code::NotFound,
                "PROGRAMME_NOT_FOUND",
                format!("no programme {}/{} version {}", key.tenant_id, key.programme_id, r.version),
                None,
            )
        })?;
        Ok(Response::new(codec::programme_to_pb(&p)))
    }

    async fn freeze_account(
        &self,
        req: Request<pb::FreezeAccountRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        self.0.freeze(req.metadata(), req.get_ref(), true).await
    }

    async fn unfreeze_account(
        &self,
        req: Request<pb::UnfreezeAccountRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        // The same fields as a freeze, with the opposite effect.
        let r = req.get_ref();
        let as_freeze = pb::FreezeAccountRequest {
            request_id: r.request_id.clone(),
            account: r.account.clone(),
            earning: r.earning,
            spending: r.spending,
            operator: r.operator.clone(),
            reason: r.reason.clone(),
        };
        self.0.freeze(req.metadata(), &as_freeze, false).await
    }
}

pub struct ReconciliationService(pub Arc<Ledger>);

#[tonic::async_trait]
impl pb::reconciliation_server::Reconciliation for ReconciliationService {
    async fn get_daily_book(&self, req: Request<pb::GetDailyBookRequest>) -> Result<Response<pb::DailyBook>, Status> {
        let r = req.get_ref();
        let key = ProgrammeKey {
            tenant_id: validate::id("tenant_id", &r.tenant_id)?,
            programme_id: validate::id("programme_id", &r.programme_id)?,
        };
        self.0.auth.check(req.metadata(), &key.tenant_id, Access::Admin)?;
        let date = chrono::NaiveDate::parse_from_str(&r.date, "%Y-%m-%d")
            .map_err(|_| invalid("date", format!("'{}' is not a date YYYY-MM-DD", r.date)))?;
        let programme = self.0.programmes.registry().read().expect("registry lock").current(&key).ok_or_else(|| {
            status(
                Code::NotFound,
                "PROGRAMME_NOT_FOUND",
                format!("no programme {}/{}", key.tenant_id, key.programme_id),
                None,
            )
        })?;
        let book = crate::books::book_for_date(
            &self.0.books,
            &self.0.programmes.registry().read().expect("registry lock"),
            &programme,
            self.0.writers.partitions(),
            date,
        )
        .map_err(|e| status(Code::Internal, "BOOKS_UNREADABLE", e.to_string(), None))?;
        Ok(Response::new(book))
    }
}
