//! The console (`/console` on the admin listener): server-rendered pages in
//! English and Chinese for the operations, risk and finance staff. It is a
//! client of the service's own gRPC handlers, called in process with the
//! signed-in client's token, so it has exactly that client's scopes: a page
//! shows only what the client may read, and an action the client may not
//! take is answered 403. Signing in (`/console/login`) takes a token of the
//! clients file and keeps it in a server-side session (an HttpOnly,
//! SameSite=Strict cookie names it); without access control no sign-in is
//! needed. Every form that changes something carries the session's form
//! token, and every action is shown for confirmation before it is sent,
//! with a request id fixed when the form was drawn (a double submit is one
//! command).

mod i18n;
mod member;
mod pages;
mod reports;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};

pub use i18n::Lang;

use super::AdminState;
use crate::api::{Access, Caller, Ledger};

/// How long a session lasts without being used.
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (the oldest go first).
const SESSIONS_MAX: usize = 10_000;
const SESSION_COOKIE: &str = "points_console";
const LANG_COOKIE: &str = "points_console_lang";

/// The signed-in browsers.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    /// The form token when access control is off (no sessions then).
    open_form_token: std::sync::OnceLock<String>,
}

#[derive(Clone)]
struct Session {
    token: String,
    form_token: String,
    used: Instant,
}

/// 32 random bytes in hex.
pub fn random_id() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the system's random source");
    crate::hex(&b)
}

impl Sessions {
    fn open(&self, token: String) -> String {
        let id = random_id();
        let mut all = self.by_id.lock().expect("sessions lock");
        all.retain(|_, s| s.used.elapsed() < SESSION_IDLE);
        if all.len() >= SESSIONS_MAX {
            if let Some(oldest) = all.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone()) {
                all.remove(&oldest);
            }
        }
        all.insert(id.clone(), Session { token, form_token: random_id(), used: Instant::now() });
        id
    }

    fn get(&self, id: &str) -> Option<Session> {
        let mut all = self.by_id.lock().expect("sessions lock");
        let s = all.get_mut(id).filter(|s| s.used.elapsed() < SESSION_IDLE)?;
        s.used = Instant::now();
        Some(s.clone())
    }

    fn close(&self, id: &str) {
        self.by_id.lock().expect("sessions lock").remove(id);
    }
}

/// Who is looking: the signed-in client (its token, for the calls), the
/// session's form token and the page's language.
pub struct Viewer {
    token: Option<String>,
    pub client: String,
    form_token: String,
    pub lang: Lang,
    ledger: Arc<Ledger>,
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

fn lang_of(headers: &HeaderMap, asked: Option<&str>) -> Lang {
    asked.and_then(Lang::parse).or_else(|| cookie(headers, LANG_COOKIE).and_then(Lang::parse)).unwrap_or_else(|| {
        Lang::accepted(headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or(""))
    })
}

/// The query parameter every page takes.
#[derive(serde::Deserialize, Default)]
pub struct LangQuery {
    lang: Option<String>,
}

impl Viewer {
    /// The viewer of a request, or the way to the sign-in page.
    fn of(state: &AdminState, headers: &HeaderMap, asked_lang: Option<&str>) -> Result<Viewer, Redirect> {
        let lang = lang_of(headers, asked_lang);
        let ledger = state.ledger.clone();
        if ledger.auth.is_open() {
            let form_token = state.sessions.open_form_token.get_or_init(random_id).clone();
            return Ok(Viewer { token: None, client: "anonymous".into(), form_token, lang, ledger });
        }
        let session = cookie(headers, SESSION_COOKIE).and_then(|id| state.sessions.get(id));
        let Some(s) = session else { return Err(Redirect::to("/console/login")) };
        let mut viewer = Viewer { token: Some(s.token), client: String::new(), form_token: s.form_token, lang, ledger };
        match viewer.ledger.auth.client(&viewer.caller_metadata().as_caller()) {
            Ok(c) => viewer.client = c.name.to_string(),
            // The token left the clients file: sign in again.
            Err(_) => return Err(Redirect::to("/console/login")),
        }
        Ok(viewer)
    }

    fn caller_metadata(&self) -> CallerMetadata {
        let mut m = tonic::metadata::MetadataMap::new();
        if let Some(t) = &self.token {
            if let Ok(v) = format!("Bearer {t}").parse() {
                m.insert("authorization", v);
            }
        }
        CallerMetadata(m)
    }

    /// A gRPC request of this viewer (its token).
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        *r.metadata_mut() = self.caller_metadata().0;
        r
    }

    /// Whether the viewer may take `access` in the programme.
    pub fn may(&self, tenant: &str, programme: &str, access: Access) -> bool {
        self.ledger.auth.allows(&self.caller_metadata().as_caller(), tenant, programme, access)
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn t(&self, key: &'static str) -> &'static str {
        self.lang.t(key)
    }

    /// Whether a posted form carries this session's form token.
    fn checks(&self, posted: &str) -> bool {
        !posted.is_empty() && posted == self.form_token
    }

    pub fn form_token(&self) -> &str {
        &self.form_token
    }
}

/// A call's metadata, to check access with.
struct CallerMetadata(tonic::metadata::MetadataMap);

impl CallerMetadata {
    fn as_caller(&self) -> Caller<'_> {
        Caller { metadata: &self.0, client: None }
    }
}

/// A page: the header with the way around, then `body`.
pub fn page(v: &Viewer, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang=(v.lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (v.t("title")) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/console" { (v.t("title")) }
                    a href="/console/alerts" { (v.t("alerts")) }
                    a href="/console/books" { (v.t("books")) }
                    a href="/console/audit" { (v.t("audit")) }
                    span.right {
                        a href="?lang=en" { "English" } " | " a href="?lang=zh" { "中文" }
                        @if v.token.is_some() {
                            " · " (v.t("signed_in_as")) " " b { (v.client) }
                            form.inline method="post" action="/console/logout" {
                                button type="submit" { (v.t("logout")) }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    let mut r = maud_response(markup);
    r.headers_mut().insert(header::CACHE_CONTROL, "no-store".parse().expect("a header value"));
    r
}

fn maud_response(m: Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing from elsewhere, no framing: the console runs offline.
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        ],
        m.into_string(),
    )
        .into_response()
}

/// A page saying what went wrong (the gRPC status's message).
pub fn error_page(v: &Viewer, status: &tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = html! { p.error { (v.t("refused")) ": " (status.message()) } };
    (code, page(v, v.t("refused"), body)).into_response()
}

const STYLE: &str = "body{font-family:system-ui,'PingFang SC','Noto Sans CJK SC',sans-serif;margin:0;color:#222}\
nav{background:#23395d;padding:.6em 1em}nav a{color:#fff;margin-right:1.2em;text-decoration:none}\
nav .right{float:right;color:#ddd}nav .right a{margin:0}main{padding:1em 2em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;white-space:nowrap}\
th{background:#f0f3f8}td.n{text-align:right;font-variant-numeric:tabular-nums}\
form.inline{display:inline}fieldset{margin:.5em 0;border:1px solid #ccd}\
.error{color:#a00;font-weight:bold}.ok{color:#060;font-weight:bold}.kpi{display:inline-block;margin-right:2em}\
.kpi b{display:block;font-size:1.6em}input,select,textarea,button{font:inherit;margin:.15em}";

pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/member", get(member::show))
        .route("/console/member/action", post(member::action))
        .route("/console/books", get(reports::books))
        .route("/console/books.csv", get(reports::books_csv))
        .route("/console/alerts", get(pages::alerts))
        .route("/console/alerts/action", post(pages::alert_action))
        .route("/console/audit", get(pages::audit))
        .route("/console/programme", get(pages::programme))
        .route("/console/programme/what-if", post(pages::what_if))
}

/// Sets the language cookie when the page was asked for in a language.
fn remember_lang(mut r: Response, asked: Option<&str>) -> Response {
    if let Some(l) = asked.and_then(Lang::parse) {
        let c = format!("{LANG_COOKIE}={}; Path=/console; SameSite=Strict; Max-Age=31536000", l.code());
        if let Ok(v) = c.parse() {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// The viewer of a request, or the way to the sign-in page.
pub fn viewer(state: &AdminState, headers: &HeaderMap, q: &LangQuery) -> Result<Viewer, Redirect> {
    Viewer::of(state, headers, q.lang.as_deref())
}

async fn home(State(s): State<AdminState>, headers: HeaderMap, Query(q): Query<LangQuery>) -> Response {
    let v = match viewer(&s, &headers, &q) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let registry = v.ledger().programmes.registry();
    let mut programmes = registry.read().expect("registry lock").all_current();
    programmes.retain(|p| v.may(&p.tenant_id, &p.programme_id, Access::Read));
    programmes.sort_by(|a, b| (&a.tenant_id, &a.programme_id).cmp(&(&b.tenant_id, &b.programme_id)));
    let body = html! {
        h2 { (v.t("member")) }
        form method="get" action="/console/member" {
            select name="programme" {
                @for p in &programmes {
                    option value=(format!("{}/{}", p.tenant_id, p.programme_id)) {
                        (p.tenant_id) " / " (p.programme_id) " (" (p.unit_name) ")"
                    }
                }
            }
            input name="member" placeholder=(v.t("member_id")) required;
            button type="submit" { (v.t("look_up")) }
        }
        h2 { (v.t("programmes")) }
        table {
            tr { th { (v.t("programme")) } th { (v.t("version")) } th { } }
            @for p in &programmes {
                tr {
                    td { (p.tenant_id) " / " (p.programme_id) " (" (p.unit_name) ")" }
                    td.n { (p.version) }
                    td {
                        a href=(format!("/console/programme?programme={}/{}", p.tenant_id, p.programme_id)) { (v.t("rules")) }
                        " · "
                        a href=(format!("/console/books?programme={}/{}", p.tenant_id, p.programme_id)) { (v.t("books")) }
                        " · "
                        a href=(format!("/console/alerts?programme={}/{}", p.tenant_id, p.programme_id)) { (v.t("alerts")) }
                        " · "
                        a href=(format!("/console/audit?programme={}/{}", p.tenant_id, p.programme_id)) { (v.t("audit")) }
                    }
                }
            }
        }
    };
    remember_lang(page(&v, v.t("title"), body), q.lang.as_deref())
}

async fn login_page(headers: HeaderMap, Query(q): Query<LangQuery>) -> Response {
    let lang = lang_of(&headers, q.lang.as_deref());
    login_form(lang, None)
}

fn login_form(lang: Lang, error: Option<&str>) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head { meta charset="utf-8"; title { (lang.t("title")) } style { (maud::PreEscaped(STYLE)) } }
            body { main {
                h1 { (lang.t("title")) }
                @if let Some(e) = error { p.error { (e) } }
                form method="post" action="/console/login" {
                    label { (lang.t("token")) " " input type="password" name="token" id="token" required autofocus; }
                    input type="hidden" name="lang" value=(lang.code());
                    button type="submit" id="sign-in" { (lang.t("login")) }
                }
            } }
        }
    };
    maud_response(markup)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    lang: String,
}

async fn login(State(s): State<AdminState>, Form(f): Form<LoginForm>) -> Response {
    let lang = Lang::parse(&f.lang).unwrap_or(Lang::En);
    let token = f.token.trim().to_string();
    let mut m = tonic::metadata::MetadataMap::new();
    let known = format!("Bearer {token}").parse().ok().map(|v| m.insert("authorization", v)).is_some()
        && s.ledger.auth.client(&Caller { metadata: &m, client: None }).is_ok();
    if !known || token.is_empty() {
        return (StatusCode::UNAUTHORIZED, login_form(lang, Some(lang.t("bad_token")))).into_response();
    }
    let id = s.sessions.open(token);
    let cookie = format!("{SESSION_COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age=28800");
    let mut r = Redirect::to("/console").into_response();
    if let Ok(v) = cookie.parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        s.sessions.close(id);
    }
    let mut r = Redirect::to("/console/login").into_response();
    if let Ok(v) = format!("{SESSION_COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0").parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `tenant/programme` as the pages pass it.
pub fn split_programme(p: &str) -> Option<(String, String)> {
    let (t, p) = p.split_once('/')?;
    Some((t.to_string(), p.to_string()))
}

/// A 403 page for an action whose form token does not match (or a
/// client without the scope).
pub fn forbidden(v: &Viewer) -> Response {
    let status = tonic::Status::permission_denied("the form is not this session's: reload the page");
    error_page(v, &status)
}

/// Whether a posted form may proceed: its form token is this session's.
pub fn form_ok(v: &Viewer, posted: &str) -> bool {
    v.checks(posted)
}
