//! Daily books: a seeded workload over several days and two programmes (one
//! in Asia/Shanghai, one in UTC; earns that expire, spends, reservations that
//! are captured, released or time out, refunds, reversals into debt,
//! adjustments both ways) through gRPC, then every day's book from
//! `Reconciliation/GetDailyBook` and from the `recon` command is compared
//! with an independent model built from the members' statements
//! (`ListEntries`). Then a corrupted balance view is caught by `recon` (and
//! `verify`).

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use chrono::TimeZone;
use common::*;
use points_ledger::clock::Clock;
use points_ledger::proto as pb;
use points_ledger::proto::reconciliation_client::ReconciliationClient;
use points_ledger::store::{self, Cf, Db};

const MEMBERS: usize = 4;
const DAYS: i64 = 4;

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger")).args(args).env("RUST_LOG", "warn").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Prog {
    id: &'static str,
    tz: chrono_tz::Tz,
    ratio: i64,
}

const PROGS: [Prog; 2] = [
    Prog { id: "points", tz: chrono_tz::Asia::Shanghai, ratio: 100 },
    Prog { id: "coins", tz: chrono_tz::UTC, ratio: 10 },
];

fn key(programme: &str, member: usize) -> Option<pb::AccountKey> {
    Some(pb::AccountKey { tenant_id: "shop".into(), programme_id: programme.into(), member_id: format!("m{member}") })
}

/// The model's book of one day of one programme.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Book {
    opening: i64,
    opening_debt: i64,
    issued: i64,
    spent: i64,
    refunded: i64,
    reversed: i64,
    expired: i64,
    adjusted_up: i64,
    adjusted_down: i64,
    closing: i64,
    debt: i64,
    reserved: i64,
    events: u64,
}

fn book_of(b: &pb::DailyBook) -> Book {
    Book {
        opening: b.opening_balance,
        opening_debt: b.opening_debt,
        issued: b.issued,
        spent: b.spent,
        refunded: b.refunded,
        reversed: b.reversed,
        expired: b.expired,
        adjusted_up: b.adjusted_up,
        adjusted_down: b.adjusted_down,
        closing: b.closing_balance,
        debt: b.debt,
        reserved: b.reserved,
        events: b.event_count,
    }
}

/// The independent model: every member's statement, classified by event
/// kind and programme day; balances from the statement's running balance.
async fn model(h: &Harness, p: &Prog, dates: &[chrono::NaiveDate]) -> BTreeMap<chrono::NaiveDate, Book> {
    let mut c = h.ledger().await;
    let mut books: BTreeMap<chrono::NaiveDate, Book> = dates.iter().map(|d| (*d, Book::default())).collect();
    for m in 0..MEMBERS {
        let mut entries = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .list_entries(pb::ListEntriesRequest {
                    account: key(p.id, m),
                    page_size: 500,
                    page_token: token.clone(),
                    min_position: None,
                })
                .await
                .unwrap()
                .into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let day_of = |e: &pb::Entry| {
            let at = e.at.as_ref().unwrap();
            p.tz.timestamp_opt(at.seconds, at.nanos as u32).unwrap().date_naive()
        };
        for d in dates {
            let before = entries.iter().rev().find(|e| day_of(e) < *d);
            let through = entries.iter().rev().find(|e| day_of(e) <= *d);
            let bal = |e: Option<&pb::Entry>| {
                e.and_then(|e| e.balance.as_ref())
                    .map(|b| (b.available + b.reserved, b.debt, b.reserved))
                    .unwrap_or_default()
            };
            let b = books.get_mut(d).unwrap();
            let (o, od, _) = bal(before);
            let (cl, debt, reserved) = bal(through);
            b.opening += o;
            b.opening_debt += od;
            b.closing += cl;
            b.debt += debt;
            b.reserved += reserved;
            for e in entries.iter().filter(|e| day_of(e) == *d) {
                b.events += 1;
                use pb::ledger_event::Event as E;
                match e.event.as_ref().unwrap().event.as_ref().unwrap() {
                    E::PointsEarned(x) => b.issued += x.granted_points,
                    E::PointsSpent(x) => b.spent += x.points,
                    E::ReservationCaptured(x) => b.spent += x.points,
                    E::SpendRefunded(x) => b.refunded += x.points,
                    E::EarnReversed(x) => b.reversed += x.points - x.written_off,
                    E::PointsRecovered(x) => b.reversed += x.written_off,
                    E::PointsExpired(x) => b.expired += x.points,
                    E::PointsAdjusted(x) if x.points > 0 => b.adjusted_up += x.points,
                    E::PointsAdjusted(x) => b.adjusted_down -= x.points,
                    _ => {}
                }
            }
        }
    }
    books
}

/// Drives the seeded workload over `DAYS` days of the manual clock.
async fn workload(h: &Harness, seed: u64) {
    let mut c = h.ledger().await;
    let mut rng = Rng(seed);
    let mut earns: Vec<(usize, usize, String)> = Vec::new();
    let mut spends: Vec<(usize, usize, String)> = Vec::new();
    let mut holds: Vec<(usize, usize, String)> = Vec::new();
    let end = T0 + DAYS * 86_400_000 - 3_600_000;
    let mut i = 0;
    while h.clock.now() < end {
        i += 1;
        let pi = rng.below(2) as usize;
        let p = &PROGS[pi];
        let m = rng.below(MEMBERS as u64) as usize;
        let id = format!("r{i}");
        let pick = |rng: &mut Rng, v: &[(usize, usize, String)]| -> Option<String> {
            let mine: Vec<_> = v.iter().filter(|(a, b, _)| *a == pi && *b == m).collect();
            (!mine.is_empty()).then(|| mine[rng.below(mine.len() as u64) as usize].2.clone())
        };
        let r = match rng.below(100) {
            0..=34 => {
                let r = c
                    .earn(pb::EarnRequest {
                        request_id: id.clone(),
                        account: key(p.id, m),
                        points: 1 + rng.below(500) as i64,
                        reason: "purchase".into(),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    earns.push((pi, m, id.clone()));
                }
                r.map(|_| ())
            }
            35..=54 => {
                let r = c
                    .spend(pb::SpendRequest {
                        request_id: id.clone(),
                        account: key(p.id, m),
                        points: 1 + rng.below(300) as i64,
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    spends.push((pi, m, id.clone()));
                }
                r.map(|_| ())
            }
            55..=64 => {
                let r = c
                    .reserve(pb::ReserveRequest {
                        request_id: id.clone(),
                        account: key(p.id, m),
                        points: 1 + rng.below(200) as i64,
                        order_ref: format!("o{i}"),
                        timeout_seconds: 600 + rng.below(7200) as i64,
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    holds.push((pi, m, id.clone()));
                }
                r.map(|_| ())
            }
            65..=71 => match pick(&mut rng, &holds) {
                Some(h) if rng.below(2) == 0 => {
                    let r = c
                        .capture_reservation(pb::CaptureReservationRequest {
                            request_id: id.clone(),
                            account: key(p.id, m),
                            reservation_id: h,
                            points: None,
                            ..Default::default()
                        })
                        .await;
                    if r.is_ok() {
                        spends.push((pi, m, id.clone()));
                    }
                    r.map(|_| ())
                }
                Some(h) => c
                    .release_reservation(pb::ReleaseReservationRequest {
                        request_id: id.clone(),
                        account: key(p.id, m),
                        reservation_id: h,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            72..=79 => match pick(&mut rng, &spends) {
                Some(s) => c
                    .refund(pb::RefundRequest {
                        request_id: id.clone(),
                        account: key(p.id, m),
                        spend_request_id: s,
                        points: 1 + rng.below(100) as i64,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            80..=87 => match pick(&mut rng, &earns) {
                Some(e) => c
                    .reverse_earn(pb::ReverseEarnRequest {
                        request_id: id.clone(),
                        account: key(p.id, m),
                        earn_request_id: e,
                        points: 1 + rng.below(600) as i64,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                None => Ok(()),
            },
            88..=94 => {
                let points = rng.below(400) as i64 - 200;
                c.adjust(pb::AdjustRequest {
                    request_id: id.clone(),
                    account: key(p.id, m),
                    points: if points == 0 { 7 } else { points },
                    operator: "ops".into(),
                    reason: "correction".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
            _ => {
                // Let time pass: lots expire and holds time out by themselves.
                h.clock.advance(rng.below(6 * 3_600_000) as i64);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(())
            }
        };
        if let Err(e) = r {
            // Rejections the workload provokes (not enough points, a refund
            // beyond the spend...) write nothing and are fine.
            assert!(matches!(e.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound), "unexpected {e:?}");
        }
        h.clock.advance(rng.below(20 * 60_000) as i64);
    }
    // Debt for certain: points earned, spent, then the earn reversed.
    let k = || key("points", 0);
    let e = pb::EarnRequest {
        request_id: "dx".into(),
        account: k(),
        points: 100,
        reason: "purchase".into(),
        ..Default::default()
    };
    let at = c.earn(e).await.unwrap().into_inner().position;
    let balance = c
        .get_account(pb::GetAccountRequest { account: k(), min_position: at, as_of: None, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    c.spend(pb::SpendRequest {
        request_id: "dy".into(),
        account: k(),
        points: balance.available,
        ..Default::default()
    })
    .await
    .unwrap();
    c.reverse_earn(pb::ReverseEarnRequest {
        request_id: "dz".into(),
        account: k(),
        earn_request_id: "dx".into(),
        points: 100,
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Waits until the log stops growing (the scheduler's expiries and timeouts
/// included) and the views have it all.
async fn settle(h: &Harness) {
    let mut last = h.records();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = h.records();
        if now == last {
            break;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_books_match_an_independent_model_and_a_corrupted_view_is_caught() {
    let h = Harness::start_with(|c| {
        c.partitions = 3;
        c.books_check_interval = Duration::ZERO;
    })
    .await;
    for p in &PROGS {
        configure(
            &h,
            pb::Programme {
                programme_id: p.id.into(),
                points_per_cash_unit: p.ratio,
                validity_days: 1,
                validity_rounding: pb::ValidityRounding::None as i32,
                time_zone: p.tz.name().into(),
                ..programme()
            },
        )
        .await;
    }
    workload(&h, 0x5eed_b00c).await;
    settle(&h).await;

    let first = chrono::DateTime::from_timestamp_millis(T0).unwrap().date_naive() - chrono::Days::new(1);
    let dates: Vec<_> = (0..=DAYS + 1).map(|d| first + chrono::Days::new(d as u64)).collect();
    let mut rc =
        ReconciliationClient::new(tonic::transport::Channel::from_shared(h.url()).unwrap().connect().await.unwrap());
    #[derive(Debug, Default)]
    struct Seen {
        expired: bool,
        debt: bool,
        refunded: bool,
        reversed: bool,
        adjusted_up: bool,
        adjusted_down: bool,
    }
    let mut seen = Seen::default();
    for p in &PROGS {
        let expected = model(&h, p, &dates).await;
        let total: u64 = expected.values().map(|b| b.events).sum();
        // The books trail the views a little: wait (bounded) for them.
        let mut got = BTreeMap::new();
        for _ in 0..100 {
            got.clear();
            for d in &dates {
                let b = rc
                    .get_daily_book(pb::GetDailyBookRequest {
                        tenant_id: "shop".into(),
                        programme_id: p.id.into(),
                        date: d.to_string(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                got.insert(*d, b);
            }
            if got.values().map(|b| b.event_count).sum::<u64>() == total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for d in &dates {
            let b = &got[d];
            assert_eq!(book_of(b), expected[d], "{} {d}", p.id);
            assert!(b.balanced, "{} {d}: {}", p.id, b.mismatch);
            assert_eq!(b.liability_cash_minor, b.closing_balance * 100 / p.ratio, "{} {d}", p.id);
            assert_eq!(b.date, d.to_string());
        }
        for b in expected.values() {
            seen.expired |= b.expired > 0;
            seen.debt |= b.debt > 0;
            seen.refunded |= b.refunded > 0;
            seen.reversed |= b.reversed > 0;
            seen.adjusted_up |= b.adjusted_up > 0;
            seen.adjusted_down |= b.adjusted_down > 0;
        }
        // Days have opening balances carried over, and books chain on.
        for w in dates.windows(2) {
            assert_eq!(got[&w[0]].closing_balance, got[&w[1]].opening_balance);
            assert_eq!(got[&w[0]].debt, got[&w[1]].opening_debt);
        }
    }
    // The workload exercised what the books count (expiry, debt, refunds and
    // reversals, adjustments both ways) on some day.
    assert!(
        seen.expired && seen.debt && seen.refunded && seen.reversed && seen.adjusted_up && seen.adjusted_down,
        "workload too tame: {seen:?}"
    );

    // Bad requests.
    let bad = rc
        .get_daily_book(pb::GetDailyBookRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            date: "2026-13-01".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let missing = rc
        .get_daily_book(pb::GetDailyBookRequest {
            tenant_id: "shop".into(),
            programme_id: "nope".into(),
            date: "2026-03-10".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // The same books from the command line, folded afresh from the log,
    // while the service runs: JSON and CSV.
    let data = h.dir.path().to_str().unwrap().to_string();
    let (from, to) = (dates[0].to_string(), dates[dates.len() - 1].to_string());
    let live: Vec<pb::DailyBook> = {
        let mut v = Vec::new();
        for p in &PROGS {
            for d in &dates {
                v.push(
                    rc.get_daily_book(pb::GetDailyBookRequest {
                        tenant_id: "shop".into(),
                        programme_id: p.id.into(),
                        date: d.to_string(),
                    })
                    .await
                    .unwrap()
                    .into_inner(),
                );
            }
        }
        v
    };
    let flags = h.log_flags();
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(flags.iter().map(String::as_str));
        cli(&all)
    };
    let (ok, out, err) = cli(&["recon", "--data-dir", &data, "--date", &from, "--to", &to, "--format", "json"]);
    assert!(ok, "{out}{err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), live.len());
    for b in &live {
        let row =
            rows.iter().find(|r| r["programme_id"] == b.programme_id.as_str() && r["date"] == b.date.as_str()).unwrap();
        for (k, v) in [
            ("opening_balance", b.opening_balance),
            ("issued", b.issued),
            ("spent", b.spent),
            ("refunded", b.refunded),
            ("reversed", b.reversed),
            ("expired", b.expired),
            ("adjusted_up", b.adjusted_up),
            ("adjusted_down", b.adjusted_down),
            ("closing_balance", b.closing_balance),
            ("debt", b.debt),
            ("liability_cash_minor", b.liability_cash_minor),
        ] {
            assert_eq!(row[k].as_i64(), Some(v), "{k} of {} {}", b.programme_id, b.date);
        }
        assert_eq!(row["event_count"].as_u64(), Some(b.event_count), "events of {} {}: {row}", b.programme_id, b.date);
        assert_eq!(row["digest"], b.digest.as_str(), "the same records, the same chain: {row} {b:?}");
        assert_eq!(row["balanced"], true);
    }
    let csv_path = h.dir.path().join("books.csv");
    let (ok, _, err) = cli(&[
        "recon",
        "--data-dir",
        &data,
        "--date",
        &from,
        "--to",
        &to,
        "--tenant",
        "shop",
        "--programme",
        "coins",
        "--format",
        "csv",
        "--output",
        csv_path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header, points_ledger::finance::reports::BOOK_COLUMNS);
    let parsed: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(parsed.len(), dates.len());
    for (row, b) in parsed.iter().zip(live.iter().filter(|b| b.programme_id == "coins")) {
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("date"), b.date);
        assert_eq!(col("closing_balance"), b.closing_balance.to_string());
        assert_eq!(col("expired"), b.expired.to_string());
    }

    // Parquet, read back with the parquet crate.
    let pq = h.dir.path().join("books.parquet");
    let (ok, _, err) = cli(&[
        "recon",
        "--data-dir",
        &data,
        "--date",
        &from,
        "--to",
        &to,
        "--format",
        "parquet",
        "--output",
        pq.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::RowAccessor;
        let reader = SerializedFileReader::new(std::fs::File::open(&pq).unwrap()).unwrap();
        let col = |name: &str| points_ledger::finance::reports::BOOK_COLUMNS.iter().position(|c| *c == name).unwrap();
        let rows: Vec<_> = reader.get_row_iter(None).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), live.len());
        for row in &rows {
            let b = live
                .iter()
                .find(|b| {
                    b.programme_id == *row.get_string(col("programme_id")).unwrap()
                        && b.date == *row.get_string(col("date")).unwrap()
                })
                .unwrap();
            assert_eq!(row.get_long(col("issued")).unwrap(), b.issued);
            assert_eq!(row.get_long(col("expired")).unwrap(), b.expired);
            assert_eq!(row.get_long(col("closing_balance")).unwrap(), b.closing_balance);
            assert_eq!(row.get_long(col("liability_cash_minor")).unwrap(), b.liability_cash_minor);
            assert_eq!(*row.get_string(col("digest")).unwrap(), b.digest);
            assert!(row.get_bool(col("balanced")).unwrap());
        }
    }

    // Roll-ups: the month and the year add the days up.
    for (period, label) in [("month", "2026-03"), ("quarter", "2026-Q1"), ("year", "2026")] {
        let (ok, out, err) =
            cli(&["recon", "--data-dir", &data, "--date", &from, "--to", &to, "--period", period, "--format", "json"]);
        assert!(ok, "{err}");
        let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), PROGS.len(), "{out}");
        for p in &PROGS {
            let row = rows.iter().find(|r| r["programme_id"] == p.id).unwrap();
            let days: Vec<_> = live.iter().filter(|b| b.programme_id == p.id).collect();
            assert_eq!(row["date"], label);
            for (k, f) in [
                ("issued", (|b: &pb::DailyBook| b.issued) as fn(&pb::DailyBook) -> i64),
                ("spent", |b| b.spent),
                ("expired", |b| b.expired),
                ("event_count", |b| b.event_count as i64),
            ] {
                assert_eq!(row[k].as_i64().unwrap(), days.iter().map(|b| f(b)).sum::<i64>(), "{period} {k}");
            }
            assert_eq!(row["opening_balance"].as_i64().unwrap(), days[0].opening_balance);
            assert_eq!(row["closing_balance"].as_i64().unwrap(), days[days.len() - 1].closing_balance);
            assert_eq!(row["balanced"], true);
        }
    }

    // The expiry forecast equals the members' lots due in the window.
    let start = dates[dates.len() - 2];
    let (ok, out, err) = cli(&[
        "recon",
        "--data-dir",
        &data,
        "--date",
        &start.to_string(),
        "--expiry-forecast-days",
        "3",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let forecast: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut lc = h.ledger().await;
    let mut due_somewhere = 0;
    for p in &PROGS {
        let from_ms = p.tz.from_local_datetime(&start.and_hms_opt(0, 0, 0).unwrap()).unwrap().timestamp_millis();
        let to_ms = from_ms + 3 * 86_400_000;
        let mut expected: BTreeMap<String, i64> = BTreeMap::new();
        for m in 0..MEMBERS {
            let a = lc
                .get_account(pb::GetAccountRequest { account: key(p.id, m), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            for lot in a.lots.iter().filter(|l| l.remaining > 0) {
                let Some(at) = &lot.expires_at else { continue };
                let ms = at.seconds * 1000 + i64::from(at.nanos) / 1_000_000;
                if (from_ms..to_ms).contains(&ms) {
                    let day = p.tz.timestamp_millis_opt(ms).unwrap().date_naive().to_string();
                    *expected.entry(day).or_default() += lot.remaining;
                }
            }
        }
        let got: BTreeMap<String, i64> = forecast
            .iter()
            .filter(|r| r["programme_id"] == p.id)
            .map(|r| (r["date"].as_str().unwrap().to_string(), r["points"].as_i64().unwrap()))
            .collect();
        assert_eq!(got, expected, "{}", p.id);
        due_somewhere += expected.len();
    }
    assert!(due_somewhere > 0, "the forecast window should hold some lots");

    // The events behind the books, exported as JSON lines and as Parquet:
    // as many as the books counted, the same in both formats.
    let counted: u64 = live.iter().filter(|b| b.programme_id == "coins").map(|b| b.event_count).sum();
    let jsonl = h.dir.path().join("coins.jsonl");
    let (ok, _, err) = cli(&[
        "export",
        "--data-dir",
        &data,
        "--format",
        "jsonl",
        "--output",
        jsonl.to_str().unwrap(),
        "--tenant",
        "shop",
        "--programme",
        "coins",
    ]);
    assert!(ok, "{err}");
    let events: Vec<serde_json::Value> =
        std::fs::read_to_string(&jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len() as u64, counted);
    assert!(events.iter().all(|e| e["programme_id"] == "coins" && e["event"]["type"] == e["event_type"]));
    let epq = h.dir.path().join("coins.parquet");
    let (ok, _, err) = cli(&[
        "export",
        "--data-dir",
        &data,
        "--format",
        "parquet",
        "--output",
        epq.to_str().unwrap(),
        "--tenant",
        "shop",
        "--programme",
        "coins",
    ]);
    assert!(ok, "{err}");
    {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::RowAccessor;
        let reader = SerializedFileReader::new(std::fs::File::open(&epq).unwrap()).unwrap();
        let rows: Vec<_> = reader.get_row_iter(None).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), events.len());
        let col = |name: &str| points_ledger::tools::export::EVENT_COLUMNS.iter().position(|c| *c == name).unwrap();
        for (row, e) in rows.iter().zip(&events) {
            assert_eq!(row.get_long(col("offset")).unwrap(), e["offset"].as_i64().unwrap());
            assert_eq!(row.get_long(col("delta")).unwrap(), e["delta"].as_i64().unwrap());
            assert_eq!(*row.get_string(col("member_id")).unwrap(), e["member_id"].as_str().unwrap());
            let inner: serde_json::Value = serde_json::from_str(row.get_string(col("event_json")).unwrap()).unwrap();
            assert_eq!(inner, e["event"]);
            // Typed columns: the instant as a timestamp, the event's points and order as their own.
            assert_eq!(row.get_timestamp_millis(col("at")).unwrap(), e["at_ms"].as_i64().unwrap());
            let points = inner.get("points").or_else(|| inner.get("granted_points"));
            let points = points.and_then(|v| v.as_str()).map(|s| s.parse::<i64>().unwrap());
            assert_eq!(row.get_long(col("points")).ok(), points, "{inner}");
            let order = inner.get("order_ref").and_then(|v| v.as_str()).filter(|s| !s.is_empty());
            assert_eq!(row.get_string(col("order_ref")).ok().map(|s| s.as_str()), order, "{inner}");
        }
    }
    // One member, one day.
    let (ok, out, err) = cli(&[
        "export",
        "--data-dir",
        &data,
        "--format",
        "jsonl",
        "--output",
        "-",
        "--account",
        "shop/coins/m1",
        "--from",
        "2026-03-11T00:00:00Z",
        "--to",
        "2026-03-12T00:00:00Z",
    ]);
    assert!(ok, "{err}");
    assert!(out.lines().all(|l| {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        e["member_id"] == "m1" && e["at"].as_str().unwrap().starts_with("2026-03-11")
    }));
    let (ok, _, err) = cli(&["export", "--data-dir", &data, "--format", "jsonl", "--output", "-", "--account", "m1"]);
    assert!(!ok && err.contains("TENANT/PROGRAMME/MEMBER"), "{err}");

    let (h_dir, clock) = h.stop_for_restart().await;
    // A corrupted balance view: one account's row removed. recon's check
    // against the view fails loudly (exit 1, the programme named), verify
    // names the key, and the service's own reconciliation consumer flags the
    // book after a restart.
    {
        let views = Db::open(&h_dir.path().join("views"), store::VIEW_CFS).unwrap();
        let victim = points_ledger::store::accounts::each(views.rows(Cf::Accounts))
            .map(Result::unwrap)
            .find(|(_, a)| a.available() + a.reserved() != 0);
        let (key, _) = victim.expect("an account with points");
        // Its header and every lot, earn and spend row.
        let prefix = store::account_key(&key);
        let mut batch = store::Batch::default();
        for (k, _) in views.scan(Cf::Accounts, &prefix, &prefix, usize::MAX).unwrap() {
            batch.delete(Cf::Accounts, &k);
        }
        views.write(batch).unwrap();
    }
    let (ok, out, err) = cli(&["recon", "--data-dir", &data, "--date", &to]);
    assert!(!ok, "a corrupted view must fail the check:\n{out}{err}");
    assert!(err.contains("MISMATCH") && err.contains("balance view"), "{err}");
    let (ok, out, _) = cli(&["verify", "--data-dir", &data]);
    assert!(!ok && out.contains("DIFFER"), "{out}");

    let h = Harness::start_in(h_dir, clock, |c| {
        c.partitions = 3;
        c.books_check_interval = Duration::ZERO;
    })
    .await;
    let mut rc =
        ReconciliationClient::new(tonic::transport::Channel::from_shared(h.url()).unwrap().connect().await.unwrap());
    let mut flagged = None;
    'wait: for _ in 0..100 {
        for p in &PROGS {
            for d in &dates {
                let b = rc
                    .get_daily_book(pb::GetDailyBookRequest {
                        tenant_id: "shop".into(),
                        programme_id: p.id.into(),
                        date: d.to_string(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if !b.balanced {
                    flagged = Some(b);
                    break 'wait;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flagged = flagged.expect("the live consumer flags a book that disagrees with the view");
    assert!(flagged.mismatch.contains("balance view sums to"), "{}", flagged.mismatch);

    // Bad arguments: a clear error and a non-zero exit.
    let (ok, _, err) = cli(&["recon", "--data-dir", &data, "--date", "yesterday"]);
    assert!(!ok && err.contains("YYYY-MM-DD"), "{err}");
    let (ok, _, err) = cli(&["recon", "--data-dir", &data, "--date", &to, "--tenant", "nobody"]);
    assert!(!ok && err.contains("no programme"), "{err}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_of_an_older_layout_are_folded_again_from_the_log_on_start() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    h.ledger().await.earn(earn("e1", "ann", 700)).await.unwrap();
    wait_for_book(&h, 1).await;
    let (dir, clock) = h.stop_for_restart().await;
    {
        // What an older build left: no marker, and a row this build never writes.
        let books = Db::open(&dir.path().join("books"), store::BOOK_CFS).unwrap();
        let mut batch = store::Batch::default();
        batch.delete(store::Cf::Outbox, store::books::BOOKS_FORMAT_KEY);
        batch.put(store::Cf::Risk, b"zz-stale", b"1");
        books.write(batch).unwrap();
    }
    let h = Harness::start_in(dir, clock, |_| {}).await;
    let book = wait_for_book(&h, 1).await;
    assert_eq!((book.issued, book.closing_balance), (700, 700));
    let (dir, _) = h.stop().await;
    let books = Db::open_read_only(&dir.path().join("books"), store::BOOK_CFS).unwrap();
    assert_eq!(books.get(Cf::Risk, b"zz-stale").unwrap(), None);
}

/// The book of 2026-03-10 once it counts `events` events (the books follow
/// the views).
async fn wait_for_book(h: &Harness, events: u64) -> pb::DailyBook {
    let mut c = ReconciliationClient::connect(h.url()).await.unwrap();
    for _ in 0..200 {
        let r = pb::GetDailyBookRequest {
            tenant_id: "shop".into(),
            programme_id: "points".into(),
            date: "2026-03-10".into(),
        };
        if let Ok(b) = c.get_daily_book(r).await.map(|b| b.into_inner()) {
            if b.event_count >= events {
                return b;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no book of {events} events");
}

#[tokio::test(flavor = "multi_thread")]
async fn redemptions_are_split_into_points_only_and_points_plus_cash_orders() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    c.earn(earn("e1", "m1", 1000)).await.unwrap();
    c.spend(spend("s-points", "m1", 100)).await.unwrap();
    c.spend(pb::SpendRequest { order_cash_amount: Some(5000), ..spend("s-cash", "m1", 200) }).await.unwrap();
    let reserve = pb::ReserveRequest {
        request_id: "r1".into(),
        account: account("m1"),
        points: 300,
        order_ref: "mall-7".into(),
        timeout_seconds: 600,
        order_cash_amount: Some(1000),
        ..Default::default()
    };
    c.reserve(reserve).await.unwrap();
    let capture = pb::CaptureReservationRequest {
        request_id: "c1".into(),
        account: account("m1"),
        reservation_id: "r1".into(),
        points: Some(250),
        ..Default::default()
    };
    c.capture_reservation(capture).await.unwrap();
    let b = wait_for_book(&h, 5).await;
    assert_eq!(b.spent, 550);
    assert_eq!((b.spent_with_cash, b.orders_points_only, b.orders_with_cash), (450, 1, 2));
    assert!(b.balanced, "{}", b.mismatch);
}
