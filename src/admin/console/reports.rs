//! Books and statistics: a programme's daily books rolled up by day, month,
//! quarter or year as a chart (SVG drawn here: no script, nothing fetched)
//! and a table with the balanced flag, as CSV, and the points expiring in
//! the next 30, 60 and 90 days. For clients with the `finance` operation.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped};

use super::{error_page, page, split_programme, viewer, LangQuery, Viewer};
use crate::admin::AdminState;
use crate::api::Access;
use crate::finance::reports::{self, Period};
use crate::proto::state;

/// Days one request covers at most.
const BOOKS_DAYS_MAX: i64 = 731;
/// Days shown without a range.
const BOOKS_DAYS_DEFAULT: i64 = 30;

#[derive(serde::Deserialize, Default)]
pub struct BooksQuery {
    #[serde(default)]
    programme: String,
    #[serde(default)]
    period: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    lang: Option<String>,
}

fn period_of(s: &str) -> Period {
    match s {
        "month" => Period::Month,
        "quarter" => Period::Quarter,
        "year" => Period::Year,
        _ => Period::Day,
    }
}

/// What a books page shows: the rolled-up books and the expiry forecast.
struct Books {
    rows: Vec<state::DailyBook>,
    /// Points expiring within 30, 60 and 90 days.
    expiring: [i64; 3],
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
}

/// Reads the books of `q`'s programme and range (Finance access checked).
async fn read(v: &Viewer, q: &BooksQuery) -> Result<Books, tonic::Status> {
    let (tenant, programme) = split_programme(&q.programme)
        .ok_or_else(|| tonic::Status::invalid_argument("choose a programme (tenant/programme)"))?;
    if !v.may(&tenant, &programme, Access::Finance) {
        return Err(tonic::Status::permission_denied("this needs the `finance` operation"));
    }
    let key = crate::domain::ProgrammeKey { tenant_id: tenant, programme_id: programme };
    let ledger = v.ledger().clone();
    let current = ledger.programmes.registry().read().expect("registry lock").current(&key);
    let current = current.ok_or_else(|| tonic::Status::not_found("no such programme"))?;
    let today = chrono::DateTime::from_timestamp_millis(ledger.clock.now())
        .map(|t| t.with_timezone(&current.time_zone).date_naive())
        .unwrap_or_default();
    let date = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    let to = date(&q.to).unwrap_or(today);
    let from = date(&q.from).unwrap_or(to - chrono::Days::new(BOOKS_DAYS_DEFAULT as u64 - 1));
    if from > to || (to - from).num_days() >= BOOKS_DAYS_MAX {
        return Err(tonic::Status::invalid_argument(format!("from..to: at most {BOOKS_DAYS_MAX} days")));
    }
    let period = period_of(&q.period);
    let read = tokio::task::spawn_blocking(move || -> Result<Books, crate::finance::books::BooksError> {
        let registry = ledger.programmes.registry();
        let registry = registry.read().expect("registry lock");
        let partitions = ledger.events.partitions();
        let mut days = Vec::new();
        for d in from.iter_days().take_while(|d| *d <= to) {
            days.push(crate::finance::books::book_for_date(&ledger.books, &registry, &current, partitions, d)?);
        }
        let forecast = reports::expiry_forecast(&ledger.views, &current, today, 90)?;
        let within = |n: i64| forecast.iter().filter(|(d, ..)| (*d - today).num_days() < n).map(|(_, p, _)| p).sum();
        Ok(Books { rows: reports::roll_up(&days, period)?, expiring: [within(30), within(60), within(90)], from, to })
    });
    read.await.map_err(|e| tonic::Status::internal(e.to_string()))?.map_err(|e| tonic::Status::internal(e.to_string()))
}

pub async fn books(State(s): State<AdminState>, headers: HeaderMap, Query(q): Query<BooksQuery>) -> Response {
    let v = match viewer(&s, &headers, &LangQuery { lang: q.lang.clone() }) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    if q.programme.is_empty() {
        return page(&v, v.t("books"), choose(&v, &q, None));
    }
    let books = match read(&v, &q).await {
        Ok(b) => b,
        Err(e) => return error_page(&v, &e),
    };
    let csv =
        format!("/console/books.csv?programme={}&period={}&from={}&to={}", q.programme, q.period, books.from, books.to);
    let body = html! {
        (choose(&v, &q, Some(&books)))
        (chart(&v, &books.rows))
        p { a href=(csv) id="csv" { (v.t("csv")) } }
        (table(&v, &books.rows))
        h2 { (v.t("forecast")) }
        table {
            @for (days, points) in [30, 60, 90].iter().zip(books.expiring) {
                tr { th { (days) " " (v.t("days")) } td.n { (points) } }
            }
        }
    };
    page(&v, &format!("{} · {}", v.t("books"), q.programme), body)
}

pub async fn books_csv(State(s): State<AdminState>, headers: HeaderMap, Query(q): Query<BooksQuery>) -> Response {
    let v = match viewer(&s, &headers, &LangQuery { lang: q.lang.clone() }) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    match read(&v, &q).await {
        Ok(b) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"books-{}-{}.csv\"", b.from, b.to)),
            ],
            reports::books_csv(&b.rows),
        )
            .into_response(),
        Err(e) => error_page(&v, &e),
    }
}

fn choose(v: &Viewer, q: &BooksQuery, books: Option<&Books>) -> Markup {
    let registry = v.ledger().programmes.registry();
    let mut programmes = registry.read().expect("registry lock").all_current();
    programmes.retain(|p| v.may(&p.tenant_id, &p.programme_id, Access::Finance));
    let (from, to) = books.map(|b| (b.from.to_string(), b.to.to_string())).unwrap_or_default();
    html! {
        form method="get" action="/console/books" {
            select name="programme" {
                @for p in &programmes {
                    @let id = format!("{}/{}", p.tenant_id, p.programme_id);
                    option value=(id) selected[id == q.programme] { (id) " (" (p.unit_name) ")" }
                }
            }
            select name="period" {
                @for (value, key) in [("day", "day"), ("month", "month"), ("quarter", "quarter"), ("year", "year")] {
                    option value=(value) selected[q.period == value] { (v.t(key)) }
                }
            }
            (v.t("from")) " " input name="from" value=(from) size="10";
            (v.t("to")) " " input name="to" value=(to) size="10";
            button type="submit" { (v.t("show")) }
        }
    }
}

fn table(v: &Viewer, rows: &[state::DailyBook]) -> Markup {
    html! {
        table #books {
            tr {
                th { (v.t("period")) } th { (v.t("issued")) } th { (v.t("spent")) }
                th { (v.t("spent_cash")) } th { (v.t("orders_points")) } th { (v.t("orders_cash")) } th { (v.t("refunded")) }
                th { (v.t("expired")) } th { (v.t("pending")) } th { (v.t("closing")) } th { (v.t("liability")) }
                th { (v.t("balanced")) }
            }
            @for b in rows {
                tr {
                    td { (b.date) } td.n { (b.issued) } td.n { (b.spent) }
                    td.n { (b.spent_with_cash) } td.n { (b.orders_points_only) } td.n { (b.orders_with_cash) }
                    td.n { (b.refunded) } td.n { (b.expired) }
                    td.n { (b.pending) } td.n { (b.closing_balance) }
                    td.n { (format!("{}.{:02}", b.liability_cash_minor / 100, (b.liability_cash_minor % 100).abs())) }
                    td { (if b.balanced { v.t("yes") } else { v.t("no") }) }
                }
            }
        }
    }
}

/// A chart's series: its word, colour and figure of a book.
type Series = (&'static str, &'static str, fn(&state::DailyBook) -> i64);

/// Grouped bars (issued, spent, expired) per period, drawn as SVG.
fn chart(v: &Viewer, rows: &[state::DailyBook]) -> Markup {
    const W: i64 = 900;
    const H: i64 = 260;
    const PAD: i64 = 40;
    let series: [Series; 3] =
        [("issued", "#2e8b57", |b| b.issued), ("spent", "#3465a4", |b| b.spent), ("expired", "#999999", |b| b.expired)];
    let max = rows.iter().flat_map(|b| series.iter().map(move |(_, _, f)| f(b))).max().unwrap_or(0).max(1);
    let n = rows.len().max(1) as i64;
    let slot = (W - 2 * PAD) / n;
    let bar = (slot / 4).max(1);
    let mut svg = format!(
        "<svg id=\"books-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" role=\"img\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#fbfcfe\"/>\
         <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#555\"/>",
        H - PAD,
        W - PAD,
        H - PAD
    );
    for (i, b) in rows.iter().enumerate() {
        let x0 = PAD + i as i64 * slot;
        for (k, (_, color, f)) in series.iter().enumerate() {
            let h = f(b).max(0) * (H - 2 * PAD) / max;
            let x = x0 + k as i64 * bar;
            svg += &format!("<rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" fill=\"{color}\"/>", H - PAD - h);
        }
        // About ten labels whatever the number of periods; a day as MM-DD.
        if i % rows.len().div_ceil(10).max(1) == 0 {
            let label = if b.date.len() == 10 { &b.date[5..] } else { b.date.as_str() };
            svg += &format!(
                "<text x=\"{x0}\" y=\"{}\" font-size=\"11\">{}</text>",
                H - PAD + 14,
                maud::html! { (label) }.into_string()
            );
        }
    }
    for (k, (name, color, _)) in series.iter().enumerate() {
        let x = PAD + k as i64 * 120;
        svg += &format!(
            "<rect x=\"{x}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"19\" font-size=\"12\">{}</text>",
            x + 16,
            v.t(name)
        );
    }
    svg += &format!("<text x=\"4\" y=\"{}\" font-size=\"10\">{max}</text></svg>", PAD);
    html! { (PreEscaped(svg)) }
}
