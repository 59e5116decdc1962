//! The member page: balance, lots, held points, level and growth, freezes,
//! the statement with its running balance (a page at a time, with who did
//! each admin act), alerts and risk counters, the balance as of a date; and
//! for admin clients the actions, each confirmed before it is sent.

use std::collections::HashMap;

use axum::extract::{Form, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::{error_page, forbidden, form_ok, page, random_id, split_programme, viewer, LangQuery, Viewer};
use crate::admin::AdminState;
use crate::api::{Access, AdminService, LedgerService};
use crate::proto as pb;
use crate::proto::points_ledger_server::PointsLedger;
use crate::proto::programme_admin_server::ProgrammeAdmin;

/// Statement entries a page shows.
const STATEMENT_PAGE: u32 = 50;
/// Lots a page shows (soonest-expiring first).
const LOTS_PAGE: u32 = 100;

#[derive(serde::Deserialize, Default)]
pub struct MemberQuery {
    #[serde(default)]
    programme: String,
    #[serde(default)]
    member: String,
    #[serde(default)]
    entries: String,
    #[serde(default)]
    as_of: String,
    #[serde(default)]
    done: String,
    /// `partition:offset` of the action just taken: the page waits for the
    /// views to have it (read your own writes).
    #[serde(default)]
    at: String,
    lang: Option<String>,
}

fn position_of(at: &str) -> Option<pb::LogPosition> {
    let (p, o) = at.split_once(':')?;
    Some(pb::LogPosition { partition: p.parse().ok()?, offset: o.parse().ok()? })
}

fn key_of(programme: &str, member: &str) -> Option<pb::AccountKey> {
    let (tenant_id, programme_id) = split_programme(programme)?;
    Some(pb::AccountKey { tenant_id, programme_id, member_id: member.to_string() })
}

pub fn when(t: &Option<pb::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// The name of a statement entry's event and its operator, if any.
fn event_of(e: &Option<pb::LedgerEvent>) -> (&'static str, String) {
    use pb::ledger_event::Event as E;
    match e.as_ref().and_then(|e| e.event.as_ref()) {
        Some(E::PointsAdjusted(x)) => ("PointsAdjusted", x.operator.clone()),
        Some(E::AccountFrozen(x)) => ("AccountFrozen", x.operator.clone()),
        Some(E::AccountUnfrozen(x)) => ("AccountUnfrozen", x.operator.clone()),
        Some(E::PointsExpired(x)) => ("PointsExpired", x.operator.clone()),
        Some(E::PendingPointsReleased(x)) => ("PendingPointsReleased", x.operator.clone()),
        Some(E::PendingPointsForfeited(x)) => ("PendingPointsForfeited", x.operator.clone()),
        Some(E::AdjustmentRequested(x)) => ("AdjustmentRequested", x.operator.clone()),
        Some(E::AdjustmentApproved(x)) => ("AdjustmentApproved", x.operator.clone()),
        Some(E::AdjustmentRejected(x)) => ("AdjustmentRejected", x.operator.clone()),
        Some(E::GrowthAdjusted(x)) => ("GrowthAdjusted", x.operator.clone()),
        Some(E::EarningsUnheld(x)) => ("EarningsUnheld", x.operator.clone()),
        Some(other) => (event_name(other), String::new()),
        None => ("", String::new()),
    }
}

fn event_name(e: &pb::ledger_event::Event) -> &'static str {
    use pb::ledger_event::Event as E;
    match e {
        E::PointsEarned(_) => "PointsEarned",
        E::PointsSpent(_) => "PointsSpent",
        E::PointsReserved(_) => "PointsReserved",
        E::ReservationCaptured(_) => "ReservationCaptured",
        E::ReservationReleased(_) => "ReservationReleased",
        E::SpendRefunded(_) => "SpendRefunded",
        E::EarnReversed(_) => "EarnReversed",
        E::PointsRecovered(_) => "PointsRecovered",
        E::LevelChanged(_) => "LevelChanged",
        E::GrowthExpired(_) => "GrowthExpired",
        E::ActivityRecorded(_) => "ActivityRecorded",
        E::PenaltyApplied(_) => "PenaltyApplied",
        E::LevelHeld(_) => "LevelHeld",
        E::ExpiryReminderDue(_) => "ExpiryReminderDue",
        E::AlertRaised(_) => "AlertRaised",
        E::EarningsHeld(_) => "EarningsHeld",
        _ => "Event",
    }
}

/// The client of each admin act among `entries`, by (partition, offset),
/// from the audit log (admin viewers only).
async fn clients_of(v: &Viewer, key: &pb::AccountKey, entries: &[pb::Entry]) -> HashMap<(u32, u64), String> {
    let mut found = HashMap::new();
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return found };
    let (Some(from), Some(to)) = (first.at, last.at) else { return found };
    let (from, to) = if from.seconds <= to.seconds { (from, to) } else { (to, from) };
    let to = pb::Timestamp { seconds: to.seconds + 1, nanos: 0 };
    let from = pb::Timestamp { seconds: from.seconds, nanos: 0 };
    let admin = AdminService(v.ledger().clone());
    let mut page_token = String::new();
    for _ in 0..20 {
        let r = pb::ListAuditLogRequest {
            tenant_id: key.tenant_id.clone(),
            programme_id: key.programme_id.clone(),
            from: Some(from),
            to: Some(to),
            page_size: 500,
            page_token,
        };
        let Ok(answer) = admin.list_audit_log(v.request(r)).await else { break };
        let answer = answer.into_inner();
        for e in answer.entries {
            if e.account.as_ref().is_some_and(|a| a.member_id == key.member_id) {
                if let Some(p) = e.position {
                    found.insert((p.partition, p.offset), e.client);
                }
            }
        }
        if answer.next_page_token.is_empty() {
            break;
        }
        page_token = answer.next_page_token;
    }
    found
}

pub async fn show(State(s): State<AdminState>, headers: HeaderMap, Query(q): Query<MemberQuery>) -> Response {
    let lq = LangQuery { lang: q.lang.clone() };
    let v = match viewer(&s, &headers, &lq) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some(key) = key_of(&q.programme, &q.member) else {
        return error_page(&v, &tonic::Status::invalid_argument("name a programme (tenant/programme) and a member"));
    };
    let ledger = LedgerService(v.ledger().clone());
    let min_position = position_of(&q.at);
    let get = pb::GetAccountRequest {
        account: Some(key.clone()),
        lots_page_size: LOTS_PAGE,
        min_position,
        ..Default::default()
    };
    let account = match ledger.get_account(v.request(get)).await {
        Ok(a) => a.into_inner(),
        Err(e) => return error_page(&v, &e),
    };
    let list = pb::ListEntriesRequest {
        account: Some(key.clone()),
        page_size: STATEMENT_PAGE,
        page_token: q.entries.clone(),
        min_position,
    };
    let entries = match ledger.list_entries(v.request(list)).await {
        Ok(e) => e.into_inner(),
        Err(e) => return error_page(&v, &e),
    };
    let admin = v.may(&key.tenant_id, &key.programme_id, Access::Admin);
    let clients = if admin { clients_of(&v, &key, &entries.entries).await } else { HashMap::new() };
    let as_of = balance_as_of(&v, &ledger, &key, &q.as_of).await;
    let risk = if admin { risk_of(&v, &key).await } else { None };
    let alerts = if admin { alerts_of(&v, &key).await } else { None };
    let body = html! {
        @if !q.done.is_empty() { p.ok { (v.t("done")) ": " (q.done) } }
        (summary(&v, &account))
        (lots(&v, &account))
        (statement(&v, &q, &entries, &clients, admin))
        (explain(&v, &q, as_of))
        @if let Some(r) = risk { (r) }
        @if let Some(a) = alerts { (a) }
        @if admin { (actions(&v, &key, &account)) } @else { p { (v.t("read_only")) } }
    };
    let title = format!("{} {} · {} / {}", v.t("member"), key.member_id, key.tenant_id, key.programme_id);
    page(&v, &title, body)
}

fn summary(v: &Viewer, a: &pb::Account) -> Markup {
    let frozen = match (a.earning_frozen, a.spending_frozen) {
        (false, false) => v.t("none").to_string(),
        (e, s) => [(e, v.t("earning")), (s, v.t("spending"))]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, w)| *w)
            .collect::<Vec<_>>()
            .join(", "),
    };
    html! {
        div #summary {
            span.kpi { (v.t("available")) b #available { (a.available) } }
            span.kpi { (v.t("reserved")) b { (a.reserved) } }
            span.kpi { (v.t("pending")) b { (a.pending) } }
            span.kpi { (v.t("debt")) b { (a.debt) } }
            span.kpi { (v.t("growth")) b { (a.growth) } }
            span.kpi { (v.t("level")) b { (if a.level.is_empty() { "-" } else { a.level.as_str() }) } }
            span.kpi { (v.t("frozen")) b { (frozen) } }
        }
    }
}

fn lots(v: &Viewer, a: &pb::Account) -> Markup {
    html! {
        h2 { (v.t("lots")) " (" (a.lots_with_points) ")" }
        table {
            tr { th { (v.t("lot")) } th { (v.t("remaining")) } th { (v.t("expires")) } }
            @for l in &a.lots {
                tr {
                    td { (l.lot_id) }
                    td.n { (l.remaining) }
                    td { @if l.expires_at.is_some() { (when(&l.expires_at)) } @else { (v.t("never")) } }
                }
            }
        }
    }
}

fn statement(
    v: &Viewer,
    q: &MemberQuery,
    page: &pb::ListEntriesResponse,
    clients: &HashMap<(u32, u64), String>,
    admin: bool,
) -> Markup {
    html! {
        h2 { (v.t("statement")) }
        table #statement {
            tr {
                th { (v.t("at")) } th { (v.t("event")) } th { (v.t("change")) } th { (v.t("balance")) }
                th { (v.t("request")) } th { (v.t("operator")) } @if admin { th { (v.t("client")) } }
            }
            @for e in &page.entries {
                @let (name, operator) = event_of(&e.event);
                @let at = e.position.map(|p| (p.partition, p.offset)).unwrap_or_default();
                tr {
                    td { (when(&e.at)) }
                    td { (name) }
                    td.n { (e.delta) }
                    td.n { (e.balance.as_ref().map_or(0, |b| b.available)) }
                    td { (e.request_id) }
                    td { (operator) }
                    @if admin { td { (clients.get(&at).cloned().unwrap_or_default()) } }
                }
            }
        }
        @if !page.next_page_token.is_empty() {
            a href=(format!("/console/member?programme={}&member={}&entries={}", q.programme, q.member, page.next_page_token)) {
                (v.t("next_page"))
            }
        }
    }
}

/// The available balance at the end of a date (the programme's zone).
async fn balance_as_of(v: &Viewer, ledger: &LedgerService, key: &pb::AccountKey, date: &str) -> Option<(String, i64)> {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let registry = v.ledger().programmes.registry();
    let programme = registry.read().expect("registry lock").current(&crate::domain::ProgrammeKey {
        tenant_id: key.tenant_id.clone(),
        programme_id: key.programme_id.clone(),
    })?;
    let end = crate::domain::calendar::start_of_day(programme.time_zone, day.succ_opt()?)? - 1;
    let at = pb::Timestamp { seconds: end.div_euclid(1000), nanos: (end.rem_euclid(1000) * 1_000_000) as i32 };
    let r = pb::GetAccountRequest { account: Some(key.clone()), as_of: Some(at), ..Default::default() };
    let a = ledger.get_account(v.request(r)).await.ok()?.into_inner();
    Some((date.to_string(), a.available))
}

fn explain(v: &Viewer, q: &MemberQuery, as_of: Option<(String, i64)>) -> Markup {
    html! {
        h2 { (v.t("explain")) }
        form method="get" action="/console/member" {
            input type="hidden" name="programme" value=(q.programme);
            input type="hidden" name="member" value=(q.member);
            input name="as_of" placeholder=(v.t("as_of")) value=(q.as_of);
            button type="submit" { (v.t("show")) }
        }
        @if let Some((d, points)) = as_of { p { (d) ": " b { (points) } } }
    }
}

async fn risk_of(v: &Viewer, key: &pb::AccountKey) -> Option<Markup> {
    let admin = AdminService(v.ledger().clone());
    let registry = v.ledger().programmes.registry();
    let programme_key =
        crate::domain::ProgrammeKey { tenant_id: key.tenant_id.clone(), programme_id: key.programme_id.clone() };
    let programme = registry.read().expect("registry lock").current(&programme_key)?;
    let today = chrono::DateTime::from_timestamp_millis(v.ledger().clock.now())?.with_timezone(&programme.time_zone);
    let date = today.date_naive().to_string();
    let r = pb::GetAccountRiskRequest { account: Some(key.clone()), date };
    let risk = admin.get_account_risk(v.request(r)).await.ok()?.into_inner();
    let json = serde_json::to_string_pretty(&risk).unwrap_or_default();
    Some(html! { h2 { (v.t("risk_today")) } pre { (json) } })
}

/// The member's alerts of the last seven days (admin viewers).
async fn alerts_of(v: &Viewer, key: &pb::AccountKey) -> Option<Markup> {
    let admin = AdminService(v.ledger().clone());
    let r = pb::ListAlertsRequest {
        tenant_id: key.tenant_id.clone(),
        programme_id: key.programme_id.clone(),
        page_size: 500,
        ..Default::default()
    };
    let alerts = admin.list_alerts(v.request(r)).await.ok()?.into_inner().alerts;
    let mine: Vec<_> = alerts.iter().filter(|a| a.accounts.iter().any(|k| k.member_id == key.member_id)).collect();
    Some(html! {
        h2 { (v.t("alerts")) }
        table #member-alerts {
            tr { th { (v.t("at")) } th { (v.t("rule")) } th { (v.t("state")) } }
            @for a in mine {
                tr {
                    td { (when(&a.at)) }
                    td { (a.rule) " " small { (a.subject) } }
                    td { (format!("{:?}", pb::AlertState::try_from(a.state).unwrap_or(pb::AlertState::Open))) }
                }
            }
        }
    })
}

/// One action's form: the fields it needs, then operator and reason.
fn action_form(v: &Viewer, key: &pb::AccountKey, kind: &str, label: &str, fields: Markup) -> Markup {
    html! {
        form method="post" action="/console/member/action" {
            fieldset {
                legend { (label) }
                input type="hidden" name="form_token" value=(v.form_token());
                input type="hidden" name="programme" value=(format!("{}/{}", key.tenant_id, key.programme_id));
                input type="hidden" name="member" value=(key.member_id);
                input type="hidden" name="kind" value=(kind);
                input type="hidden" name="request_id" value=(format!("console-{}", &random_id()[..24]));
                (fields)
                input name="operator" placeholder=(v.t("operator")) value=(v.client) required;
                input name="reason" placeholder=(v.t("reason")) required;
                button type="submit" id=(format!("{kind}-submit")) { (label) }
            }
        }
    }
}

fn actions(v: &Viewer, key: &pb::AccountKey, a: &pb::Account) -> Markup {
    let flags = html! {
        label { input type="checkbox" name="earning" value="true"; (v.t("earning")) }
        label { input type="checkbox" name="spending" value="true"; (v.t("spending")) }
    };
    html! {
        h2 { (v.t("actions")) }
        (action_form(v, key, "adjust", v.t("adjust"), html! {
            input type="number" name="points" id="adjust-points" placeholder=(v.t("points")) required;
        }))
        (action_form(v, key, "freeze", v.t("freeze"), flags.clone()))
        (action_form(v, key, "unfreeze", v.t("unfreeze"), flags))
        (action_form(v, key, "recycle", v.t("recycle"), html! {}))
        @if a.pending > 0 || a.earnings_held {
            (action_form(v, key, "release", v.t("release"), html! {}))
            (action_form(v, key, "forfeit", v.t("forfeit"), html! {}))
        }
        @if !a.pending_adjustments.is_empty() {
            h3 { (v.t("waiting_approval")) }
            @for p in &a.pending_adjustments {
                p { (p.approval_id) ": " (p.points) " · " (p.operator) " · " (p.reason) " · " (p.client) }
                @let id = html! { input type="hidden" name="approval_id" value=(p.approval_id); };
                (action_form(v, key, "approve", v.t("approve"), id.clone()))
                (action_form(v, key, "reject", v.t("reject"), id))
            }
        }
    }
}

#[derive(serde::Deserialize, Clone, Default)]
pub struct ActionForm {
    #[serde(default)]
    form_token: String,
    programme: String,
    member: String,
    kind: String,
    request_id: String,
    #[serde(default)]
    points: String,
    #[serde(default)]
    earning: Option<String>,
    #[serde(default)]
    spending: Option<String>,
    #[serde(default)]
    approval_id: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirmed: String,
}

/// The confirmation of an action: what it will do, and the same form again
/// with `confirmed`.
fn confirmation(v: &Viewer, f: &ActionForm) -> Response {
    let hidden = [
        ("form_token", f.form_token.as_str()),
        ("programme", &f.programme),
        ("member", &f.member),
        ("kind", &f.kind),
        ("request_id", &f.request_id),
        ("points", &f.points),
        ("approval_id", &f.approval_id),
        ("operator", &f.operator),
        ("reason", &f.reason),
        ("earning", f.earning.as_deref().unwrap_or("")),
        ("spending", f.spending.as_deref().unwrap_or("")),
        ("confirmed", "yes"),
    ];
    let body = html! {
        table {
            tr { th { (v.t("member")) } td { (f.programme) " · " (f.member) } }
            tr { th { (v.t("action")) } td #confirm-kind { (f.kind) } }
            @if !f.points.is_empty() { tr { th { (v.t("points")) } td { (f.points) } } }
            @if !f.approval_id.is_empty() { tr { th { (v.t("request")) } td { (f.approval_id) } } }
            tr { th { (v.t("operator")) } td { (f.operator) } }
            tr { th { (v.t("reason")) } td { (f.reason) } }
        }
        form method="post" action="/console/member/action" {
            @for (name, value) in hidden {
                @if !value.is_empty() { input type="hidden" name=(name) value=(value); }
            }
            button type="submit" id="confirm" { (v.t("confirm")) }
        }
        a href=(format!("/console/member?programme={}&member={}", f.programme, f.member)) { (v.t("cancel")) }
    };
    page(v, v.t("confirm_q"), body)
}

pub async fn action(State(s): State<AdminState>, headers: HeaderMap, Form(f): Form<ActionForm>) -> Response {
    let v = match viewer(&s, &headers, &LangQuery::default()) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some(key) = key_of(&f.programme, &f.member) else { return forbidden(&v) };
    if !form_ok(&v, &f.form_token) || !v.may(&key.tenant_id, &key.programme_id, Access::Admin) {
        return forbidden(&v);
    }
    if f.confirmed != "yes" {
        return confirmation(&v, &f);
    }
    match send(&v, &key, &f).await {
        Ok(reply) => {
            let done = if reply.pending_approval_id.is_empty() {
                f.kind.clone()
            } else {
                format!("{} ({})", f.kind, v.t("waits_approval"))
            };
            let at = reply.position.map(|p| format!("{}:{}", p.partition, p.offset)).unwrap_or_default();
            let (programme, member, done) = (&f.programme, &f.member, url_escape(&done));
            let url = format!("/console/member?programme={programme}&member={member}&done={done}&at={at}");
            Redirect::to(&url).into_response()
        }
        Err(status) => error_page(&v, &status),
    }
}

/// A form value in a URL's query.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends the confirmed action through the service's own handlers.
async fn send(v: &Viewer, key: &pb::AccountKey, f: &ActionForm) -> Result<pb::CommandReply, tonic::Status> {
    let (ledger, admin) = (LedgerService(v.ledger().clone()), AdminService(v.ledger().clone()));
    let (id, account) = (f.request_id.clone(), Some(key.clone()));
    let (operator, reason) = (f.operator.clone(), f.reason.clone());
    let (earning, spending) = (f.earning.is_some(), f.spending.is_some());
    let freeze = pb::FreezeAccountRequest {
        request_id: id.clone(),
        account: account.clone(),
        earning,
        spending,
        operator: operator.clone(),
        reason: reason.clone(),
    };
    let approval = pb::AdjustmentApprovalRequest {
        request_id: id.clone(),
        approval_id: f.approval_id.clone(),
        operator: operator.clone(),
        reason: reason.clone(),
        account: account.clone(),
    };
    let reply = match f.kind.as_str() {
        "adjust" => {
            let points =
                f.points.trim().parse().map_err(|_| tonic::Status::invalid_argument("points: a whole number"))?;
            let r = pb::AdjustRequest { request_id: id, account, points, operator, reason, ..Default::default() };
            ledger.adjust(v.request(r)).await?
        }
        "freeze" => admin.freeze_account(v.request(freeze)).await?,
        "unfreeze" => {
            let r = pb::UnfreezeAccountRequest {
                request_id: freeze.request_id,
                account: freeze.account,
                earning,
                spending,
                operator: freeze.operator,
                reason: freeze.reason,
            };
            admin.unfreeze_account(v.request(r)).await?
        }
        "recycle" => {
            let r =
                pb::ExpireRequest { request_id: id, account, all_points: true, reason, operator, ..Default::default() };
            ledger.expire(v.request(r)).await?
        }
        "release" => {
            let r = pb::ReleasePendingPointsRequest { request_id: id, account, operator, reason, ..Default::default() };
            ledger.release_pending_points(v.request(r)).await?
        }
        "forfeit" => {
            let r = pb::ForfeitPendingPointsRequest { request_id: id, account, operator, reason, ..Default::default() };
            ledger.forfeit_pending_points(v.request(r)).await?
        }
        "approve" => admin.approve_adjustment(v.request(approval)).await?,
        "reject" => admin.reject_adjustment(v.request(approval)).await?,
        other => return Err(tonic::Status::invalid_argument(format!("no action {other}"))),
    };
    Ok(reply.into_inner())
}
