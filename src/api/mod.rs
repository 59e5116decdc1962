//! The gRPC boundary: one file per service (`ledger`, `admin`,
//! `reconciliation`, `cluster`, `feed`, `webhooks`), the validation of every request into domain commands
//! (`commands`, `validate`), the one conversion to the API's messages
//! (`convert`), the one map from outcomes to status codes (`errors`), and
//! access control (`auth`). The services answer queries from the views
//! (`projection::queries`) and the books; commands go to the writers.
//!
//! tonic is known here, in `server` (which serves these services) and in
//! the generated code (`proto`); nowhere else.

mod admin;
mod audit;
mod auth;
mod cluster;
mod commands;
pub mod convert;
mod feed;
pub mod errors;
pub mod forward;
mod ledger;
mod reconciliation;
pub mod validate;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Code, Response, Status};

pub use admin::AdminService;
pub use auth::{Access, Auth, Caller, ClientIdentity, TlsPeer};
pub use cluster::ClusterService;
pub use feed::FeedService;
pub use ledger::LedgerService;
pub use reconciliation::ReconciliationService;

use errors::{invalid, programme_not_found, status};

use crate::clock::Clock;
use crate::domain::{self, AccountKey, Command, CommandBody, ProgrammeKey};
use crate::log::record::partition_for;
use crate::programmes::Programmes;
use crate::proto as pb;
use crate::store::Db;
use crate::writer::Writers;

pub const ENTRIES_PAGE_SIZE_MAX: u32 = 500;
/// The most lots one `GetAccount` answer lists (a page; the rest by token).
pub const LOTS_PAGE_SIZE_MAX: u32 = 1000;
pub const ENTRIES_PAGE_SIZE_DEFAULT: u32 = 100;
/// Longest a query waits for its view to reach `min_position`.
pub const QUERY_WAIT_MS_MAX: u64 = 5_000;
/// Longest page token a caller may send back, in hex characters.
pub const PAGE_TOKEN_CHARS_MAX: usize = 1024;

/// What the services share.
pub struct Ledger {
    pub writers: Arc<Writers>,
    /// The reconciliation consumer's books.
    pub books: Arc<Db>,
    pub programmes: Arc<Programmes>,
    pub views: Arc<Db>,
    /// The account log and the control stream (the feed reads them).
    pub events: Arc<dyn crate::log::EventLog>,
    pub control: Arc<dyn crate::log::EventLog>,
    /// How long a feed subscriber may leave its buffer full.
    pub feed_stall: Duration,
    /// Set when the server stops taking calls: streams end.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Where this instance's webhook deliveries stand.
    pub deliveries: crate::webhook::worker::Deliveries,
    pub positions: watch::Receiver<Vec<u64>>,
    pub clock: Arc<dyn Clock>,
    pub auth: Auth,
    /// Connections to the other instances of a cluster.
    pub forwarder: forward::Forwarder,
    /// The service's metrics.
    pub metrics: crate::metrics::Metrics,
}

/// Where a command for partition `p` goes from this instance.
enum Route {
    /// This instance writes it (or is catching up with it: its writer answers).
    Here,
    /// Forward it to the owner at this address.
    To(String),
    /// Nobody to give it to now.
    Moving(&'static str),
}

impl Ledger {
    async fn command(&self, command: Command) -> Result<Response<pb::CommandReply>, Status> {
        let reply = self.writers.submit(command).await?;
        Ok(Response::new(convert::reply_to_pb(reply)))
    }

    /// Where a command for partition `p` goes: its writer here, or the
    /// instance whose claim is the partition's latest (never for a call
    /// that was forwarded here already).
    fn route_of(&self, p: u32, metadata: &tonic::metadata::MetadataMap) -> Route {
        if self.writers.owns(p) || self.writers.catching_up(p) {
            return Route::Here;
        }
        if forward::was_forwarded(metadata) {
            return Route::Moving("it was forwarded here, and this instance does not write it");
        }
        match self.writers.owner_of(p) {
            Some(o)
                if o.writer != self.writers.writer_id() && !o.address.is_empty() && o.address != self.advertise() =>
            {
                Route::To(o.address.clone())
            }
            _ => Route::Moving("it has no owner now"),
        }
    }

    /// Splits a batch: the valid commands this instance decides (with
    /// their index), and per owner the indexes to forward (with one of their
    /// partitions, for the error if the owner is gone); invalid and
    /// unplaceable commands get their answer in `results` at once.
    #[allow(clippy::type_complexity)]
    fn split_batch(
        &self,
        caller: &Caller<'_>,
        commands: &[pb::BatchCommand],
        results: &mut [Option<pb::batch_result::Result>],
    ) -> (Vec<(usize, Command)>, std::collections::BTreeMap<String, (u32, Vec<usize>)>) {
        let mut local = Vec::new();
        let mut remote = std::collections::BTreeMap::<String, (u32, Vec<usize>)>::new();
        for (i, c) in commands.iter().enumerate() {
            let command = match self.build_batched(caller, c) {
                Ok(command) => command,
                Err(s) => {
                    results[i] = Some(pb::batch_result::Result::Error(commands::command_error(s)));
                    continue;
                }
            };
            let p = self.writers.partition_of(&command.account);
            match self.route_of(p, caller.metadata) {
                Route::Here => local.push((i, command)),
                Route::To(address) => remote.entry(address).or_insert_with(|| (p, Vec::new())).1.push(i),
                Route::Moving(why) => {
                    results[i] = Some(pb::batch_result::Result::Error(commands::command_error(forward::moving(p, why))))
                }
            }
        }
        (local, remote)
    }

    fn advertise(&self) -> &str {
        self.writers.advertise()
    }

    /// A validated command: decided here when this instance writes its
    /// partition, else forwarded (as the original request) to the owner.
    async fn route<R: prost::Message + Clone + 'static>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        path: &'static str,
        request: &R,
        command: Command,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let p = self.writers.partition_of(&command.account);
        match self.route_of(p, metadata) {
            Route::Here => self.command(command).await,
            Route::To(address) => {
                self.forwarder.unary(&address, path, metadata, self.advertise(), request.clone(), p).await
            }
            Route::Moving(why) => Err(forward::moving(p, why)),
        }
    }

    /// Freezes (or, with `freeze` false, unfreezes) earning and/or spending.
    async fn freeze(
        &self,
        caller: &Caller<'_>,
        r: &pb::FreezeAccountRequest,
        freeze: bool,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let account = validate::account(&r.account)?;
        let client = self.auth.check(caller, &account.tenant_id, &account.programme_id, Access::Admin)?;
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
        let path = if freeze { forward::path::FREEZE_ACCOUNT } else { forward::path::UNFREEZE_ACCOUNT };
        // An unfreeze request has a freeze's fields and numbers: the same bytes.
        let context = domain::CommandContext { client: client.name.to_string(), ..Default::default() };
        let command = Command { request_id, account, body, context };
        self.route(caller.metadata, path, r, command).await
    }

    /// Approves (or rejects) an adjustment waiting for a second admin client.
    async fn decide_adjustment(
        &self,
        caller: &Caller<'_>,
        r: &pb::AdjustmentApprovalRequest,
        approve: bool,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let account = validate::account(&r.account)?;
        let client = self.auth.check(caller, &account.tenant_id, &account.programme_id, Access::Admin)?;
        let approval_id = validate::request_id(&r.approval_id)
            .map_err(|_| invalid("approval_id", "must be the pending_approval_id of an Adjust (1..128 characters)"))?;
        let operator = validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?;
        let reason = validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?;
        let request_id = validate::request_id(&r.request_id)?;
        let (body, path) = if approve {
            (CommandBody::ApproveAdjustment { approval_id, operator, reason }, forward::path::APPROVE_ADJUSTMENT)
        } else {
            (CommandBody::RejectAdjustment { approval_id, operator, reason }, forward::path::REJECT_ADJUSTMENT)
        };
        let context = domain::CommandContext { client: client.name.to_string(), ..Default::default() };
        let command = Command { request_id, account, body, context };
        self.route(caller.metadata, path, r, command).await
    }

    /// The programme's current rules, or NOT_FOUND.
    fn programme(&self, key: &ProgrammeKey) -> Result<Arc<domain::Programme>, Status> {
        let found = self.programmes.registry().read().expect("registry lock").current(key);
        found.ok_or_else(|| programme_not_found(key, None))
    }

    /// Waits (bounded) until the views of `min`'s partition have folded it.
    async fn wait_for(&self, account: &AccountKey, min: Option<&pb::LogPosition>) -> Result<(), Status> {
        let Some(min) = min else { return Ok(()) };
        let p = partition_for(account, self.writers.partitions());
        if min.partition != p {
            return Err(invalid("min_position.partition", format!("this account's events are in partition {p}")));
        }
        if self.writers.past_end(p, min.offset) {
            return Err(status(
                Code::OutOfRange,
                "POSITION_PAST_END",
                format!("offset {} of partition {p} lies past the end of its log", min.offset),
                None,
            ));
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

    /// Runs `work` (reads of the books, a scan of alerts) on a blocking
    /// thread, never on the async runtime's.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Ledger) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let ledger = self.clone();
        tokio::task::spawn_blocking(move || work(&ledger)).await.map_err(errors::internal)?
    }

    /// Runs a read of the views on a blocking thread, never on the async
    /// runtime's (a long statement or a large account must not stall other
    /// calls, health checks included).
    async fn read_views<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Db) -> Result<T, crate::projection::queries::QueryError> + Send + 'static,
    ) -> Result<T, Status> {
        use crate::projection::queries::QueryError;
        let views = self.views.clone();
        match tokio::task::spawn_blocking(move || read(&views)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e @ QueryError::HistoryTooLong)) => {
                Err(status(Code::FailedPrecondition, "AS_OF_HISTORY_TOO_LONG", e.to_string(), Some("as_of")))
            }
            Ok(Err(e)) => Err(errors::internal(e)),
            Err(e) => Err(errors::internal(e)),
        }
    }

    fn view_position(&self, account: &AccountKey) -> pb::LogPosition {
        let p = partition_for(account, self.writers.partitions());
        let next = self.positions.borrow().get(p as usize).copied().unwrap_or(0);
        pb::LogPosition { partition: p, offset: next.saturating_sub(1) }
    }
}

/// A request's `page_size`: 0 means the default, more than `max` is refused.
fn page_size(n: u32, max: u32) -> Result<usize, Status> {
    match n {
        0 => Ok(ENTRIES_PAGE_SIZE_DEFAULT.min(max) as usize),
        n if n <= max => Ok(n as usize),
        _ => Err(invalid("page_size", format!("must be at most {max}"))),
    }
}

/// A page token's bytes (tokens are hex this service issued).
fn unhex(field: &str, s: &str) -> Result<Vec<u8>, Status> {
    let bad = || invalid(field, "not a token this service issued");
    if !s.is_ascii() || !s.len().is_multiple_of(2) || s.len() > PAGE_TOKEN_CHARS_MAX {
        return Err(bad());
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(bad))
        .collect()
}
