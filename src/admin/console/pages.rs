//! The console's programme pages: alerts (filtered by rule and time, with
//! acknowledge and resolve, and the accounts behind each), the audit log
//! (filtered), and the programme's rules, their version history and the
//! what-if report of a proposed rule set.

use axum::extract::{Form, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::member::when;
use super::{error_page, forbidden, form_ok, page, random_id, split_programme, viewer, LangQuery, Viewer};
use crate::admin::AdminState;
use crate::api::{Access, AdminService};
use crate::proto as pb;
use crate::proto::programme_admin_server::ProgrammeAdmin;

#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    programme: String,
    /// Alerts: the rule; audit: the action.
    #[serde(default)]
    only: String,
    /// Audit: the client.
    #[serde(default)]
    client: String,
    #[serde(default)]
    days: String,
    lang: Option<String>,
}

/// The time range of the last `days` days (7 by default, at most 92).
fn range(v: &Viewer, days: &str) -> (pb::Timestamp, pb::Timestamp) {
    let days: i64 = days.parse().unwrap_or(7).clamp(1, 92);
    let now = v.ledger().clock.now().div_euclid(1000) + 1;
    (pb::Timestamp { seconds: now - days * 86_400, nanos: 0 }, pb::Timestamp { seconds: now, nanos: 0 })
}

/// The programme chooser and filters of a list page.
fn filters(v: &Viewer, action: &str, q: &ListQuery, with_client: bool) -> Markup {
    let registry = v.ledger().programmes.registry();
    let mut programmes = registry.read().expect("registry lock").all_current();
    programmes.retain(|p| v.may(&p.tenant_id, &p.programme_id, Access::Admin));
    html! {
        form method="get" action=(action) {
            select name="programme" {
                @for p in &programmes {
                    @let id = format!("{}/{}", p.tenant_id, p.programme_id);
                    option value=(id) selected[id == q.programme] { (id) }
                }
            }
            input name="only" placeholder=(if with_client { v.t("action") } else { v.t("rule") }) value=(q.only);
            @if with_client { input name="client" placeholder=(v.t("client")) value=(q.client); }
            input name="days" placeholder=(v.t("days")) value=(q.days) size="4";
            button type="submit" { (v.t("filter")) }
        }
    }
}

pub async fn alerts(State(s): State<AdminState>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let v = match viewer(&s, &headers, &LangQuery { lang: q.lang.clone() }) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some((tenant_id, programme_id)) = split_programme(&q.programme) else {
        return page(&v, v.t("alerts"), filters(&v, "/console/alerts", &q, false));
    };
    let (from, to) = range(&v, &q.days);
    let admin = AdminService(v.ledger().clone());
    let r = pb::ListAlertsRequest {
        tenant_id: tenant_id.clone(),
        programme_id: programme_id.clone(),
        from: Some(from),
        to: Some(to),
        page_size: 500,
        page_token: String::new(),
    };
    let alerts = match admin.list_alerts(v.request(r)).await {
        Ok(a) => a.into_inner().alerts,
        Err(e) => return error_page(&v, &e),
    };
    let shown = alerts.iter().filter(|a| q.only.is_empty() || a.rule == q.only);
    let body = html! {
        (filters(&v, "/console/alerts", &q, false))
        table #alerts {
            tr { th { (v.t("at")) } th { (v.t("rule")) } th { (v.t("accounts")) } th { (v.t("state")) } th { } }
            @for a in shown {
                tr {
                    td { (when(&a.at)) }
                    td { (a.rule) br; small { (a.subject) } }
                    td {
                        @for k in &a.accounts {
                            a href=(format!("/console/member?programme={}/{}&member={}", k.tenant_id, k.programme_id, k.member_id)) {
                                (k.member_id)
                            } " "
                        }
                    }
                    td { (format!("{:?}", pb::AlertState::try_from(a.state).unwrap_or(pb::AlertState::Open))) }
                    td {
                        @for (resolved, label) in [(false, v.t("acknowledge")), (true, v.t("resolve"))] {
                            form.inline method="post" action="/console/alerts/action" {
                                input type="hidden" name="form_token" value=(v.form_token());
                                input type="hidden" name="programme" value=(q.programme);
                                input type="hidden" name="alert_id" value=(a.alert_id);
                                input type="hidden" name="resolved" value=(resolved);
                                input type="hidden" name="request_id" value=(format!("console-{}", &random_id()[..24]));
                                input name="operator" value=(v.client) size="8" required;
                                input name="note" placeholder=(v.t("reason")) size="12";
                                button type="submit" { (label) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&v, &format!("{} · {}", v.t("alerts"), q.programme), body)
}

#[derive(serde::Deserialize)]
pub struct AlertForm {
    #[serde(default)]
    form_token: String,
    programme: String,
    alert_id: String,
    resolved: bool,
    request_id: String,
    operator: String,
    #[serde(default)]
    note: String,
}

pub async fn alert_action(State(s): State<AdminState>, headers: HeaderMap, Form(f): Form<AlertForm>) -> Response {
    let v = match viewer(&s, &headers, &LangQuery::default()) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some((tenant_id, programme_id)) = split_programme(&f.programme) else { return forbidden(&v) };
    if !form_ok(&v, &f.form_token) || !v.may(&tenant_id, &programme_id, Access::Admin) {
        return forbidden(&v);
    }
    let r = pb::AlertActionRequest {
        request_id: f.request_id,
        tenant_id,
        programme_id,
        alert_id: f.alert_id,
        operator: f.operator,
        note: f.note,
    };
    let admin = AdminService(v.ledger().clone());
    let done =
        if f.resolved { admin.resolve_alert(v.request(r)).await } else { admin.acknowledge_alert(v.request(r)).await };
    match done {
        Ok(_) => Redirect::to(&format!("/console/alerts?programme={}", f.programme)).into_response(),
        Err(e) => error_page(&v, &e),
    }
}

pub async fn audit(State(s): State<AdminState>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let v = match viewer(&s, &headers, &LangQuery { lang: q.lang.clone() }) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some((tenant_id, programme_id)) = split_programme(&q.programme) else {
        return page(&v, v.t("audit"), filters(&v, "/console/audit", &q, true));
    };
    let (from, to) = range(&v, &q.days);
    let admin = AdminService(v.ledger().clone());
    let r = pb::ListAuditLogRequest {
        tenant_id,
        programme_id,
        from: Some(from),
        to: Some(to),
        page_size: 500,
        page_token: String::new(),
    };
    let entries = match admin.list_audit_log(v.request(r)).await {
        Ok(a) => a.into_inner().entries,
        Err(e) => return error_page(&v, &e),
    };
    let shown = entries
        .iter()
        .filter(|e| (q.only.is_empty() || e.action == q.only) && (q.client.is_empty() || e.client == q.client));
    let body = html! {
        (filters(&v, "/console/audit", &q, true))
        table #audit {
            tr {
                th { (v.t("at")) } th { (v.t("action")) } th { (v.t("client")) } th { (v.t("operator")) }
                th { (v.t("reason")) } th { (v.t("member")) } th { (v.t("points")) } th { (v.t("request")) }
            }
            @for e in shown {
                tr {
                    td { (when(&e.at)) } td { (e.action) } td { (e.client) } td { (e.operator) } td { (e.reason) }
                    td { (e.account.as_ref().map(|a| a.member_id.as_str()).unwrap_or("")) }
                    td.n { (e.amount) } td { (e.request_id) }
                }
            }
        }
    };
    page(&v, &format!("{} · {}", v.t("audit"), q.programme), body)
}

pub async fn programme(State(s): State<AdminState>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let v = match viewer(&s, &headers, &LangQuery { lang: q.lang.clone() }) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some((tenant_id, programme_id)) = split_programme(&q.programme) else {
        return error_page(&v, &tonic::Status::invalid_argument("name a programme (tenant/programme)"));
    };
    let admin = AdminService(v.ledger().clone());
    let r = pb::GetProgrammeRequest { tenant_id: tenant_id.clone(), programme_id: programme_id.clone(), version: 0 };
    let current = match admin.get_programme(v.request(r)).await {
        Ok(p) => p.into_inner(),
        Err(e) => return error_page(&v, &e),
    };
    let key = crate::domain::ProgrammeKey { tenant_id, programme_id };
    let (versions, acts) = {
        let registry = v.ledger().programmes.registry();
        let reg = registry.read().expect("registry lock");
        let versions: Vec<_> = (1..=current.version).rev().filter_map(|n| reg.version(&key, n)).collect();
        let acts: Vec<_> = reg.audit_of(&key).iter().filter(|e| e.action == "configure_programme").cloned().collect();
        (versions, acts)
    };
    let json = serde_json::to_string_pretty(&current).unwrap_or_default();
    let body = html! {
        h2 { (v.t("rules")) " (" (v.t("version")) " " (current.version) ")" }
        pre #rules { (json) }
        h2 { (v.t("history")) }
        table {
            tr {
                th { (v.t("version")) } th { (v.t("at")) } th { (v.t("client")) } th { (v.t("operator")) }
                th { (v.t("changed")) }
            }
            @for (i, p) in versions.iter().enumerate() {
                @let act = acts.iter().find(|e| e.reason == format!("version {}", p.version));
                tr {
                    td.n { (p.version) }
                    td { (when(&Some(crate::api::convert::timestamp(p.configured_at)))) }
                    td { (act.map(|a| a.client.as_str()).unwrap_or("")) }
                    td { (act.map(|a| a.operator.as_str()).unwrap_or("")) }
                    td.changed { (changed(p, versions.get(i + 1).map(|b| b.as_ref())).join(", ")) }
                }
            }
        }
        (what_if_form(&v, &q.programme, &json))
    };
    page(&v, &format!("{} · {}", v.t("programme"), q.programme), body)
}

/// The fields a programme version changed from the one before it (every
/// field set, for the first), by their names in the API.
fn changed(version: &crate::domain::Programme, before: Option<&crate::domain::Programme>) -> Vec<String> {
    let json = |p: &crate::domain::Programme| {
        let mut value = serde_json::to_value(crate::api::convert::programme_to_pb(p)).unwrap_or_default();
        if let Some(m) = value.as_object_mut() {
            // Every version has its own number and time.
            m.remove("version");
            m.remove("configured_at");
        }
        value
    };
    let Some(before) = before else { return vec!["(first version)".to_string()] };
    let (now, then) = (json(version), json(before));
    let Some(fields) = now.as_object() else { return Vec::new() };
    fields.iter().filter(|(k, x)| then.get(k.as_str()) != Some(*x)).map(|(k, _)| k.clone()).collect()
}

fn what_if_form(v: &Viewer, programme: &str, rules: &str) -> Markup {
    html! {
        h2 { (v.t("what_if")) }
        form method="post" action="/console/programme/what-if" {
            input type="hidden" name="form_token" value=(v.form_token());
            input type="hidden" name="programme" value=(programme);
            textarea name="rules" rows="12" cols="100" { (rules) }
            br;
            (v.t("from")) " " input name="from" placeholder="YYYY-MM-DD" required;
            (v.t("to")) " " input name="to" placeholder="YYYY-MM-DD" required;
            button type="submit" { (v.t("run")) }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct WhatIfForm {
    #[serde(default)]
    form_token: String,
    programme: String,
    rules: String,
    from: String,
    to: String,
}

/// Runs the what-if report of a proposed rule set on a blocking thread
/// (it reads the log of the period): for admin clients.
pub async fn what_if(State(s): State<AdminState>, headers: HeaderMap, Form(f): Form<WhatIfForm>) -> Response {
    let v = match viewer(&s, &headers, &LangQuery::default()) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some((tenant, programme)) = split_programme(&f.programme) else { return forbidden(&v) };
    if !form_ok(&v, &f.form_token) || !v.may(&tenant, &programme, Access::Admin) {
        return forbidden(&v);
    }
    let ledger = v.ledger().clone();
    let ran = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        use crate::tools::what_if;
        let proposed = what_if::parse_rules(&f.rules, "the proposed rules", &tenant, &programme)?;
        let date = |s: &str| chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d");
        let period = what_if::Period::of(proposed.time_zone, date(&f.from)?, date(&f.to)?)?;
        let report = what_if::what_if(ledger.events.as_ref(), &proposed, period)?;
        Ok(what_if::table(&report))
    })
    .await;
    match ran {
        Ok(Ok(table)) => page(&v, v.t("what_if"), html! { pre #what-if { (table) } }),
        Ok(Err(e)) => error_page(&v, &tonic::Status::invalid_argument(format!("{e:#}"))),
        Err(e) => error_page(&v, &tonic::Status::internal(e.to_string())),
    }
}
