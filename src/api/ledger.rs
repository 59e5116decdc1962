//! `points.v1.PointsLedger`: the eleven commands, `PreviewActivity`,
//! `SubmitBatch`, and the queries on members' accounts.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::commands::command_error;
use super::convert;
use super::errors::{internal, invalid};
use super::forward::path::{PREVIEW_ACTIVITY, SUBMIT_BATCH};
use super::{
    forward, page_size, unhex, validate, Access, Caller, Ledger, Route, ENTRIES_PAGE_SIZE_MAX, LOTS_PAGE_SIZE_MAX,
};
use crate::domain::{self, calendar};
use crate::projection::queries::{self, EntryAt};
use crate::proto as pb;

/// Most commands one `SubmitBatch` call carries.
pub const SUBMIT_BATCH_COMMANDS_MAX: usize = 1000;
/// Statement entries one `ListLevelChanges` page reads at most.
pub const LEVEL_CHANGES_SCAN_ENTRIES_MAX: usize = 10_000;
pub const EXPIRING_PAGE_SIZE_MAX: u32 = 1000;
/// Programmes `ListMemberAccounts` looks in at most.
pub const MEMBER_ACCOUNTS_PROGRAMMES_MAX: usize = 1000;
pub const EXPIRING_WITHIN_DAYS_MAX: i32 = 3650;
/// `ListExpiring`'s window for a programme without reminder days.
pub const EXPIRING_WITHIN_DAYS_DEFAULT: i32 = 15;

#[derive(Clone)]
pub struct LedgerService(pub Arc<Ledger>);

/// A statement page token: the last row returned.
fn entry_token(field: &str, token: &str) -> Result<Option<EntryAt>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    EntryAt::from_bytes(&unhex(field, token)?)
        .map(Some)
        .ok_or_else(|| invalid(field, "not a token this service issued"))
}

/// The token of the page after the one ending at `last`, when `more` may follow.
fn next_token(last: Option<EntryAt>, more: bool) -> String {
    match last {
        Some(at) if more => crate::hex(&at.to_bytes()),
        _ => String::new(),
    }
}

/// Puts an owner's answers to a forwarded share of a batch in their places.
fn fill_forwarded(
    results: &mut [Option<pb::batch_result::Result>],
    indexes: &[usize],
    answer: Result<pb::SubmitBatchResponse, Status>,
) {
    match answer {
        Ok(r) if r.results.len() == indexes.len() => {
            for (&i, r) in indexes.iter().zip(r.results) {
                results[i] = r.result;
            }
        }
        Ok(r) => {
            let s = internal(format!("the owner answered {} of {} forwarded commands", r.results.len(), indexes.len()));
            for &i in indexes {
                results[i] = Some(pb::batch_result::Result::Error(command_error(s.clone())));
            }
        }
        Err(s) => {
            for &i in indexes {
                results[i] = Some(pb::batch_result::Result::Error(command_error(s.clone())));
            }
        }
    }
}

/// The trait's methods: every command is validated into a domain command
/// and submitted the same way, so the eleven are generated from their names.
macro_rules! ledger_service {
    ($($command:ident: $request:ty),* $(,)?; $($rest:tt)*) => {
        #[tonic::async_trait]
        impl pb::points_ledger_server::PointsLedger for LedgerService {
            $(
                async fn $command(&self, req: Request<$request>) -> Result<Response<pb::CommandReply>, Status> {
                    self.0.unary(req).await
                }
            )*
            $($rest)*
        }
    };
}

ledger_service! {
    earn: pb::EarnRequest,
    spend: pb::SpendRequest,
    reserve: pb::ReserveRequest,
    capture_reservation: pb::CaptureReservationRequest,
    release_reservation: pb::ReleaseReservationRequest,
    refund: pb::RefundRequest,
    reverse_earn: pb::ReverseEarnRequest,
    expire: pb::ExpireRequest,
    adjust: pb::AdjustRequest,
    record_activity: pb::RecordActivityRequest,
    adjust_growth: pb::AdjustGrowthRequest,
    release_pending_points: pb::ReleasePendingPointsRequest,
    forfeit_pending_points: pb::ForfeitPendingPointsRequest,
    unhold_account: pb::UnholdAccountRequest;

    async fn list_pending_points(
        &self,
        req: Request<pb::ListPendingPointsRequest>,
    ) -> Result<Response<pb::ListPendingPointsResponse>, Status> {
        let key = validate::account(&req.get_ref().account)?;
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Admin)?;
        self.0.programme(&key.programme())?;
        self.0.wait_for(&key, req.get_ref().min_position.as_ref()).await?;
        let position = self.0.view_position(&key);
        let read = key.clone();
        let account = self.0.read_views(move |views| Ok(queries::account(views, &read)?)).await?;
        Ok(Response::new(convert::pending_to_pb(&account, position)))
    }

    async fn preview_activity(
        &self,
        req: Request<pb::RecordActivityRequest>,
    ) -> Result<Response<pb::ActivityPreview>, Status> {
        let ledger = &self.0;
        let command = ledger.build(&Caller::of(&req), req.get_ref())?;
        let p = ledger.writers.partition_of(&command.account);
        match ledger.route_of(p, req.metadata()) {
            Route::Here => {
                let events = ledger.writers.preview(command).await?;
                Ok(Response::new(convert::preview_to_pb(&events)))
            }
            Route::To(address) => {
                let (metadata, me) = (req.metadata(), ledger.advertise());
                ledger.forwarder.unary(&address, PREVIEW_ACTIVITY, metadata, me, req.get_ref().clone(), p).await
            }
            Route::Moving(why) => Err(forward::moving(p, why)),
        }
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let n = req.get_ref().commands.len();
        if n == 0 || n > SUBMIT_BATCH_COMMANDS_MAX {
            return Err(invalid("commands", format!("must hold 1..={SUBMIT_BATCH_COMMANDS_MAX} commands")));
        }
        // Every command is validated on its own; the valid ones go to their
        // writers in order (here, or in one forwarded batch per owner), all
        // before any answer is awaited (each partition decides its share in
        // group commits), and each gets its own answer.
        let mut results: Vec<Option<pb::batch_result::Result>> = vec![None; n];
        let (local, remote) = self.0.split_batch(&Caller::of(&req), &req.get_ref().commands, &mut results);
        let forwarded: Vec<_> = remote
            .into_iter()
            .map(|(address, (partition, indexes))| {
                let batch = pb::SubmitBatchRequest {
                    commands: indexes.iter().map(|&i| req.get_ref().commands[i].clone()).collect(),
                };
                let (ledger, metadata) = (self.0.clone(), req.metadata().clone());
                let sent = tokio::spawn(async move {
                    let me = ledger.writers.advertise().to_string();
                    let f = &ledger.forwarder;
                    f.unary::<_, pb::SubmitBatchResponse>(&address, SUBMIT_BATCH, &metadata, &me, batch, partition).await
                });
                (indexes, sent)
            })
            .collect();
        let (indexes, commands): (Vec<usize>, Vec<_>) = local.into_iter().unzip();
        for (i, answer) in indexes.into_iter().zip(self.0.writers.submit_all(commands).await) {
            results[i] = Some(match answer {
                Ok(reply) => pb::batch_result::Result::Reply(convert::reply_to_pb(reply)),
                Err(e) => pb::batch_result::Result::Error(command_error(e.into())),
            });
        }
        for (indexes, sent) in forwarded {
            let answer = sent.await.map_err(internal).and_then(|r| r);
            fill_forwarded(&mut results, &indexes, answer.map(|r| r.into_inner()));
        }
        let results = results.into_iter().map(|r| pb::BatchResult { result: r }).collect();
        Ok(Response::new(pb::SubmitBatchResponse { results }))
    }

    async fn list_member_accounts(
        &self,
        req: Request<pb::ListMemberAccountsRequest>,
    ) -> Result<Response<pb::ListMemberAccountsResponse>, Status> {
        let r = req.get_ref();
        let tenant = validate::id("tenant_id", &r.tenant_id)?;
        let member = validate::id("member_id", &r.member_id)?;
        let caller = Caller::of(&req);
        // Unknown callers are refused as anywhere else; a known one sees
        // only the programmes it may read (possibly none).
        self.0.auth.client(&caller)?;
        let mut programmes: Vec<_> = self
            .0
            .programmes
            .registry()
            .read()
            .expect("registry lock")
            .all_current()
            .into_iter()
            .filter(|p| p.tenant_id == tenant && self.0.auth.allows(&caller, &tenant, &p.programme_id, Access::Read))
            .collect();
        programmes.sort_by(|a, b| a.programme_id.cmp(&b.programme_id));
        let mut accounts = Vec::new();
        for programme in programmes.into_iter().take(MEMBER_ACCOUNTS_PROGRAMMES_MAX) {
            let key = domain::AccountKey::new(&tenant, &programme.programme_id, &member);
            let position = self.0.view_position(&key);
            let read = key.clone();
            let found = self
                .0
                .read_views(move |views| {
                    Ok(if queries::account_exists(views, &read)? { Some(queries::account(views, &read)?) } else { None })
                })
                .await?;
            if let Some(account) = found {
                let level = convert::level_status_to_pb(&programme, domain::level_status(&programme, &account));
                accounts.push(convert::account_to_pb(&key, &account, level, position, &None, 0));
            }
        }
        Ok(Response::new(pb::ListMemberAccountsResponse { accounts }))
    }

    async fn get_account(&self, req: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let r = req.get_ref();
        let key = validate::account(&r.account)?;
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Read)?;
        let programme = self.0.programme(&key.programme())?;
        self.0.wait_for(&key, r.min_position.as_ref()).await?;
        let position = self.0.view_position(&key);
        let as_of = r.as_of.as_ref().map(|t| validate::instant("as_of", t)).transpose()?;
        let read = key.clone();
        let account = self
            .0
            .read_views(move |views| match as_of {
                Some(at) => queries::account_as_of(views, &read, at),
                None => Ok(queries::account(views, &read)?),
            })
            .await?;
        let level = convert::level_status_to_pb(&programme, domain::level_status(&programme, &account));
        let page_size = page_size(r.lots_page_size, LOTS_PAGE_SIZE_MAX)
            .map_err(|_| invalid("lots_page_size", format!("must be at most {LOTS_PAGE_SIZE_MAX}")))?;
        let after = match r.lots_page_token.as_str() {
            "" => None,
            t => Some(
                convert::lots_after(&unhex("lots_page_token", t)?)
                    .ok_or_else(|| invalid("lots_page_token", "not a token this service issued"))?,
            ),
        };
        let mut reply = convert::account_to_pb(&key, &account, level, position, &after, page_size);
        if let Some((at, points)) = domain::next_reminder(&programme, &account) {
            reply.next_reminder_at = Some(convert::timestamp(at));
            reply.next_reminder_points = points;
        }
        Ok(Response::new(reply))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = req.get_ref();
        let key = validate::account(&r.account)?;
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Read)?;
        self.0.programme(&key.programme())?;
        let size = page_size(r.page_size, ENTRIES_PAGE_SIZE_MAX)?;
        self.0.wait_for(&key, r.min_position.as_ref()).await?;
        let after = entry_token("page_token", &r.page_token)?;
        let read = key.clone();
        let (rows, more) = self.0.read_views(move |views| queries::entries(views, &read, after, size)).await?;
        let last = rows.last().map(|(at, _)| *at);
        let entries =
            rows.into_iter().map(|(_, e)| convert::entry_to_pb(e)).collect::<Result<Vec<_>, _>>().map_err(internal)?;
        Ok(Response::new(pb::ListEntriesResponse { entries, next_page_token: next_token(last, more) }))
    }

    async fn list_level_changes(
        &self,
        req: Request<pb::ListLevelChangesRequest>,
    ) -> Result<Response<pb::ListLevelChangesResponse>, Status> {
        let r = req.get_ref();
        let key = validate::account(&r.account)?;
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Read)?;
        self.0.programme(&key.programme())?;
        let size = page_size(r.page_size, ENTRIES_PAGE_SIZE_MAX)?;
        self.0.wait_for(&key, r.min_position.as_ref()).await?;
        let after = entry_token("page_token", &r.page_token)?;
        // Level changes are rare among a member's events: a page reads the
        // statement, at most LEVEL_CHANGES_SCAN_ENTRIES_MAX entries.
        let read = key.clone();
        let (rows, last, exhausted) = self
            .0
            .read_views(move |views| {
                queries::level_changes(views, &read, after, size, LEVEL_CHANGES_SCAN_ENTRIES_MAX)
            })
            .await?;
        let changes = rows.into_iter().filter_map(convert::level_change_to_pb).collect();
        Ok(Response::new(pb::ListLevelChangesResponse { changes, next_page_token: next_token(last, !exhausted) }))
    }

    async fn list_expiring(
        &self,
        req: Request<pb::ListExpiringRequest>,
    ) -> Result<Response<pb::ListExpiringResponse>, Status> {
        let r = req.get_ref();
        let tenant = validate::id("tenant_id", &r.tenant_id)?;
        let programme_id = validate::id("programme_id", &r.programme_id)?;
        self.0.auth.check(&Caller::of(&req), &tenant, &programme_id, Access::Read)?;
        let programme =
            self.0.programme(&validate::programme_key(&tenant, &programme_id)?)?;
        let days = match r.within_days {
            0 if programme.reminder_days > 0 => programme.reminder_days as i32,
            0 => EXPIRING_WITHIN_DAYS_DEFAULT,
            d if (1..=EXPIRING_WITHIN_DAYS_MAX).contains(&d) => d,
            _ => {
                return Err(invalid(
                    "within_days",
                    format!("must be 0 (the programme's reminder window) ..= {EXPIRING_WITHIN_DAYS_MAX}"),
                ))
            }
        };
        let size = page_size(r.page_size, EXPIRING_PAGE_SIZE_MAX)?;
        let now = self.0.clock.now();
        let until = calendar::add_days(now, i64::from(days));
        let after = if r.page_token.is_empty() { None } else { Some(unhex("page_token", &r.page_token)?) };
        let (t, p) = (tenant.clone(), programme_id.clone());
        let (found, last, more) =
            self.0.read_views(move |views| queries::expiring(views, &t, &p, after.as_deref(), now, until, size)).await?;
        let lots = found
            .into_iter()
            .map(|l| pb::ExpiringLot {
                account: Some(pb::AccountKey {
                    tenant_id: tenant.clone(),
                    programme_id: programme_id.clone(),
                    member_id: l.member_id,
                }),
                lot_id: l.lot_id,
                points: l.points,
                expires_at: Some(convert::timestamp(l.expires_at)),
            })
            .collect();
        let next_page_token = if more { crate::hex(&last) } else { String::new() };
        Ok(Response::new(pb::ListExpiringResponse { lots, next_page_token }))
    }
}
