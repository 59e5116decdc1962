//! `ProgrammeAdmin/ListAuditLog`: every admin act on a programme, merged
//! from the books (the account log's acts) and the registry (the control
//! stream's), oldest first.

use tonic::{Response, Status};

use super::errors::{internal, invalid};
use super::{page_size, unhex, validate, Access, Caller, Ledger, ENTRIES_PAGE_SIZE_MAX};
use crate::finance::audit::{self, After, AuditEntry};
use crate::proto as pb;

/// How far back a request without `from` reaches.
const AUDIT_DEFAULT_DAYS: i64 = 7;
/// The longest range one request may ask for.
const AUDIT_RANGE_DAYS_MAX: i64 = 366;
const DAY_MS: i64 = 86_400_000;

fn token(after: After) -> String {
    let (at, (p, o, i)) = after;
    let mut b = at.to_be_bytes().to_vec();
    b.extend_from_slice(&p.to_be_bytes());
    b.extend_from_slice(&o.to_be_bytes());
    b.extend_from_slice(&i.to_be_bytes());
    crate::hex(&b)
}

fn after_of(t: &str) -> Result<Option<After>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    let b = unhex("page_token", t)?;
    let bad = || invalid("page_token", "not a token this service issued");
    if b.len() != 22 {
        return Err(bad());
    }
    let at = i64::from_be_bytes(b[0..8].try_into().map_err(|_| bad())?);
    let p = u32::from_be_bytes(b[8..12].try_into().map_err(|_| bad())?);
    let o = u64::from_be_bytes(b[12..20].try_into().map_err(|_| bad())?);
    let i = u16::from_be_bytes(b[20..22].try_into().map_err(|_| bad())?);
    Ok(Some((at, (p, o, i))))
}

fn entry_to_pb(e: AuditEntry, tenant: &str, programme: &str, partitions: u32) -> pb::AuditEntry {
    let account = (!e.member_id.is_empty()).then(|| pb::AccountKey {
        tenant_id: tenant.to_string(),
        programme_id: programme.to_string(),
        member_id: e.member_id.clone(),
    });
    let partition = if e.place.0 == audit::CONTROL { partitions } else { e.place.0 };
    pb::AuditEntry {
        at: Some(super::convert::timestamp(e.at)),
        client: e.client,
        operator: e.operator,
        action: e.action,
        reason: e.reason,
        account,
        request_id: e.request_id,
        position: Some(pb::LogPosition { partition, offset: e.place.1 }),
        amount: e.amount,
    }
}

impl Ledger {
    pub(super) async fn list_audit_log(
        self: &std::sync::Arc<Self>,
        caller: &Caller<'_>,
        r: &pb::ListAuditLogRequest,
    ) -> Result<Response<pb::ListAuditLogResponse>, Status> {
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        self.auth.check(caller, &key.tenant_id, &key.programme_id, Access::Admin)?;
        self.programme(&key)?;
        let to = match &r.to {
            Some(t) => validate::instant("to", t)?,
            None => self.clock.now().saturating_add(1),
        };
        let from = match &r.from {
            Some(t) => validate::instant("from", t)?,
            None => to.saturating_sub(AUDIT_DEFAULT_DAYS * DAY_MS),
        };
        if to <= from || to - from > AUDIT_RANGE_DAYS_MAX * DAY_MS {
            return Err(invalid("to", format!("must be after from, at most {AUDIT_RANGE_DAYS_MAX} days later")));
        }
        let size = page_size(r.page_size, ENTRIES_PAGE_SIZE_MAX)?;
        let after = after_of(&r.page_token)?;
        let control = self.programmes.registry().read().expect("registry lock").audit_of(&key).to_vec();
        let read = key.clone();
        let page = self
            .blocking(move |l| audit::list(&l.books, &control, &read, (from, to), after, size).map_err(internal))
            .await?;
        let next_page_token = match page.last() {
            Some(e) if page.len() == size => token(e.order()),
            _ => String::new(),
        };
        let partitions = self.events.partitions();
        let entries = page.into_iter().map(|e| entry_to_pb(e, &key.tenant_id, &key.programme_id, partitions)).collect();
        Ok(Response::new(pb::ListAuditLogResponse { entries, next_page_token }))
    }
}
