//! `points.v1.ProgrammeAdmin`: programme rules, freezing, levels set by
//! hand, and the risk
//! view (alerts, a member's counters, issuance per day). Every call needs
//! an admin client when access control is on, but `GetProgramme`, which
//! shows a programme's risk thresholds to admin clients only.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::errors::{internal, invalid, programme_not_found};
use super::{page_size, unhex, validate, Access, Caller, Ledger, ENTRIES_PAGE_SIZE_MAX};
use crate::domain::{self, calendar};
use crate::proto as pb;

/// Longest time range one `ListAlerts` call covers.
pub const ALERTS_RANGE_DAYS_MAX: i64 = 92;
/// Programme days `ListAlerts` covers when the caller names no range:
/// today and the six before, in the programme's time zone.
pub const ALERTS_DEFAULT_DAYS: i64 = 7;
/// The longest alert id (`ListAlerts` gives them far shorter).
pub const ALERT_ID_CHARS_MAX: usize = 256;
/// Most days one `GetIssuance` call returns.
pub const ISSUANCE_DAYS_MAX: i64 = 366;
const DAY_MS: i64 = 86_400_000;

#[derive(Clone)]
pub struct AdminService(pub Arc<Ledger>);

#[tonic::async_trait]
impl pb::programme_admin_server::ProgrammeAdmin for AdminService {
    async fn list_audit_log(
        &self,
        req: Request<pb::ListAuditLogRequest>,
    ) -> Result<Response<pb::ListAuditLogResponse>, Status> {
        self.0.list_audit_log(&Caller::of(&req), req.get_ref()).await
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let r = req.get_ref();
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Admin)?;
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
        if to <= from || to - from > ALERTS_RANGE_DAYS_MAX * DAY_MS {
            return Err(invalid("to", format!("must be after from, at most {ALERTS_RANGE_DAYS_MAX} days later")));
        }
        let size = page_size(r.page_size, ENTRIES_PAGE_SIZE_MAX)?;
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
        let all = self
            .0
            .blocking(move |l| crate::finance::risk::alerts(&l.books, &programme, from, to).map_err(internal))
            .await?;
        let registry = self.0.programmes.registry();
        let registry = registry.read().expect("registry lock");
        let all: Vec<pb::Alert> = all
            .into_iter()
            .map(|a| {
                let id = crate::finance::risk::alert_id(&a);
                convert::alert_to_pb(a, registry.alert_history(&key, &id))
            })
            .collect();
        drop(registry);
        let mut alerts: Vec<pb::Alert> =
            all.into_iter().filter(|a| after.as_ref().is_none_or(|t| sort_key(a) > *t)).take(size + 1).collect();
        let more = alerts.len() > size;
        alerts.truncate(size);
        let next_page_token = match alerts.last() {
            Some(a) if more => crate::hex(sort_key(a).as_bytes()),
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
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Admin)?;
        self.0.programme(&key.programme())?;
        let read = key.clone();
        let state =
            self.0.blocking(move |l| crate::finance::risk::account_risk(&l.books, &read).map_err(internal)).await?;
        let state = state.unwrap_or_default();
        let mut out = pb::AccountRisk {
            account: r.account.clone(),
            date: convert::date_of(state.day),
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
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Admin)?;
        self.0.programme(&key)?;
        let parse = |field: &str, v: &str| {
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map_err(|_| invalid(field, format!("'{v}' is not a date YYYY-MM-DD")))
        };
        let (from, to) = (parse("from_date", &r.from_date)?, parse("to_date", &r.to_date)?);
        if to < from || (to - from).num_days() >= ISSUANCE_DAYS_MAX {
            return Err(invalid("to_date", format!("must be on or after from_date, at most {ISSUANCE_DAYS_MAX} days")));
        }
        let days = self
            .0
            .blocking(move |l| {
                let mut days = Vec::new();
                let mut d = from;
                while d <= to {
                    let day = calendar::days_since_epoch(d);
                    let issued = crate::finance::risk::issuance(&l.books, &key, day).map_err(internal)?;
                    let shares_taken = l.programmes.registry().read().expect("registry lock").shares_taken(&key, day);
                    days.push(pb::DayIssuance { date: d.to_string(), issued, shares_taken });
                    d = d.succ_opt().ok_or_else(|| invalid("to_date", "out of range"))?;
                }
                Ok(days)
            })
            .await?;
        Ok(Response::new(pb::GetIssuanceResponse { days }))
    }

    async fn configure_programme(
        &self,
        req: Request<pb::ConfigureProgrammeRequest>,
    ) -> Result<Response<pb::ConfigureProgrammeReply>, Status> {
        let r = req.get_ref();
        // The caller first: one without admin rights learns nothing about
        // what the service would accept (its tenant is compared as sent).
        let tenant = r.programme.as_ref().map(|p| p.tenant_id.as_str()).unwrap_or_default();
        let programme = r.programme.as_ref().map(|p| p.programme_id.as_str()).unwrap_or_default();
        let client = self.0.auth.check(&Caller::of(&req), tenant, programme, Access::Admin)?;
        let input = r.programme.as_ref().ok_or_else(|| invalid("programme", "is required"))?;
        let programme = validate::programme(input)?;
        let request_id = validate::request_id(&r.request_id)?;
        let operator = validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?;
        let fingerprint = domain::fingerprint_programme(&programme, &operator);
        let (programmes, now) = (self.0.programmes.clone(), self.0.clock.now());
        let (stored, position, replayed) = tokio::task::spawn_blocking(move || {
            programmes.configure(&request_id, &operator, &client.name, programme, fingerprint, now)
        })
        .await
        .map_err(internal)??;
        Ok(Response::new(pb::ConfigureProgrammeReply {
            request_id: r.request_id.clone(),
            replayed,
            programme: Some(convert::programme_to_pb(&stored)),
            position: Some(convert::position_to_pb(position)),
        }))
    }

    async fn get_programme(&self, req: Request<pb::GetProgrammeRequest>) -> Result<Response<pb::Programme>, Status> {
        let r = req.get_ref();
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        self.0.auth.check(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Read)?;
        let found = {
            let reg = self.0.programmes.registry();
            let reg = reg.read().expect("registry lock");
            if r.version == 0 {
                reg.current(&key)
            } else {
                reg.version(&key, r.version)
            }
        };
        let p = found.ok_or_else(|| programme_not_found(&key, Some(r.version)))?;
        let mut answer = convert::programme_to_pb(&p);
        // The risk thresholds tell a farmer how far to go: admins only.
        if !self.0.auth.allows(&Caller::of(&req), &key.tenant_id, &key.programme_id, Access::Admin) {
            answer.risk = None;
        }
        Ok(Response::new(answer))
    }

    async fn acknowledge_alert(
        &self,
        req: Request<pb::AlertActionRequest>,
    ) -> Result<Response<pb::AlertActionReply>, Status> {
        self.0.act_on_alert(&Caller::of(&req), req.get_ref(), false).await
    }

    async fn resolve_alert(
        &self,
        req: Request<pb::AlertActionRequest>,
    ) -> Result<Response<pb::AlertActionReply>, Status> {
        self.0.act_on_alert(&Caller::of(&req), req.get_ref(), true).await
    }

    async fn configure_webhook(
        &self,
        req: Request<pb::ConfigureWebhookRequest>,
    ) -> Result<Response<pb::ConfigureWebhookReply>, Status> {
        self.0.configure_webhook(&Caller::of(&req), req.get_ref()).await
    }

    async fn list_webhook_deliveries(
        &self,
        req: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        self.0.list_webhook_deliveries(&Caller::of(&req), req.get_ref()).await
    }

    async fn approve_adjustment(
        &self,
        req: Request<pb::AdjustmentApprovalRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        self.0.decide_adjustment(&Caller::of(&req), req.get_ref(), true).await
    }

    async fn reject_adjustment(
        &self,
        req: Request<pb::AdjustmentApprovalRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        self.0.decide_adjustment(&Caller::of(&req), req.get_ref(), false).await
    }

    async fn set_level(&self, req: Request<pb::SetLevelRequest>) -> Result<Response<pb::CommandReply>, Status> {
        let (caller, r) = (Caller::of(&req), req.get_ref());
        let account = validate::account(&r.account)?;
        let client = self.0.auth.check(&caller, &account.tenant_id, &account.programme_id, Access::Admin)?;
        let body = domain::CommandBody::SetLevel {
            level: if r.level.is_empty() { String::new() } else { validate::text("level", &r.level, 64, true)? },
            operator: validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?,
            reason: validate::text("reason", &r.reason, validate::REASON_CHARS_MAX, true)?,
            hold_until: r.hold_until.as_ref().map(|t| validate::instant("hold_until", t)).transpose()?,
        };
        let request_id = validate::request_id(&r.request_id)?;
        let context = domain::CommandContext { client: client.name.to_string(), ..Default::default() };
        let command = domain::Command { request_id, account, body, context };
        self.0.route(caller.metadata, super::forward::path::SET_LEVEL, r, command).await
    }

    async fn freeze_account(
        &self,
        req: Request<pb::FreezeAccountRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        self.0.freeze(&Caller::of(&req), req.get_ref(), true).await
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
        self.0.freeze(&Caller::of(&req), &as_freeze, false).await
    }
}

impl Ledger {
    /// Acknowledges (or resolves) an alert: validated, recorded in the
    /// control stream, listed with the alert from then on.
    async fn act_on_alert(
        &self,
        caller: &Caller<'_>,
        r: &pb::AlertActionRequest,
        resolved: bool,
    ) -> Result<Response<pb::AlertActionReply>, Status> {
        let key = validate::programme_key(&r.tenant_id, &r.programme_id)?;
        let client = self.auth.check(caller, &key.tenant_id, &key.programme_id, Access::Admin)?;
        self.programme(&key)?;
        let request_id = validate::request_id(&r.request_id)?;
        let alert_id = validate::text("alert_id", &r.alert_id, ALERT_ID_CHARS_MAX, true)?;
        let operator = validate::text("operator", &r.operator, validate::OPERATOR_CHARS_MAX, true)?;
        let note = validate::text("note", &r.note, validate::REASON_CHARS_MAX, false)?;
        let action = crate::log::record::AlertActioned { programme: key, alert_id, resolved, note };
        let (programmes, now) = (self.programmes.clone(), self.clock.now());
        let id = request_id.clone();
        let (position, replayed) =
            tokio::task::spawn_blocking(move || programmes.act_on_alert(&id, &operator, &client.name, action, now))
                .await
                .map_err(internal)??;
        Ok(Response::new(pb::AlertActionReply {
            request_id,
            replayed,
            position: Some(convert::position_to_pb(position)),
        }))
    }
}
