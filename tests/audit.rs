//! `verify` and `replay` through the real binary: clean views verify (also
//! beside a running service), a corrupted view is caught and named, and a
//! replay up to a time folds only what was decided by then.

use crate::common;

use std::process::Command;

use common::*;
use points_ledger::domain::AccountKey;
use points_ledger::proto as pb;
use points_ledger::store::snapshot as codec;
use points_ledger::store::{self, Cf, Db};

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_points-ledger")).args(args).env("RUST_LOG", "warn").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_clean_views_and_names_a_corrupted_key() {
    let h = Harness::start().await;
    configure(&h, programme()).await;
    let mut c = h.ledger().await;
    let mut last = None;
    for i in 0..30 {
        c.earn(earn(&format!("e{i}"), &format!("m{}", i % 4), 100)).await.unwrap();
        last = c.spend(spend(&format!("s{i}"), &format!("m{}", i % 4), 10)).await.unwrap().into_inner().position;
    }
    // Half an hour later, one more earn.
    h.clock.advance(1_800_000);
    let r = c.earn(earn("late", "m0", 1000)).await.unwrap().into_inner();
    c.get_account(pb::GetAccountRequest {
        account: account("m0"),
        min_position: r.position,
        as_of: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let _ = last;
    let data = h.dir.path().to_str().unwrap().to_string();

    // Beside the running service.
    let (ok, out) = cli(&["verify", "--data-dir", &data]);
    assert!(ok, "{out}");
    assert!(out.contains("byte-identical"), "{out}");

    let (dir, _clock) = h.stop().await;
    let data = dir.path().to_str().unwrap().to_string();
    let (ok, out) = cli(&["verify", "--data-dir", &data]);
    assert!(ok, "{out}");
    assert!(out.contains("books verified"), "the books and risk view are verified too: {out}");

    // Replay everything, and replay up to T0 (before the late earn).
    let into = dir.path().join("replayed");
    let (ok, out) = cli(&["replay", "--data-dir", &data, "--into", into.to_str().unwrap()]);
    assert!(ok && out.contains("replayed"), "{out}");
    let early = dir.path().join("early");
    let until = chrono::DateTime::from_timestamp_millis(T0 + 60_000).unwrap().to_rfc3339();
    let (ok, out) = cli(&["replay", "--data-dir", &data, "--into", early.to_str().unwrap(), "--until-time", &until]);
    assert!(ok, "{out}");
    let balance = |path: &std::path::Path| {
        let db = Db::open_read_only(path, store::VIEW_CFS).unwrap();
        let key = AccountKey::new("shop", "points", "m0");
        points_ledger::store::accounts::load(&db, Cf::Accounts, &key).unwrap().0.available()
    };
    assert_eq!(balance(&into.join("views")) - balance(&early.join("views")), 1000);
    assert_eq!(balance(&into.join("views")), balance(&dir.path().join("views")));
    assert!(into.join("books").exists() && early.join("books").exists(), "all views by default");
    let only = dir.path().join("only-books");
    let (ok, out) = cli(&["replay", "--data-dir", &data, "--into", only.to_str().unwrap(), "--views", "books"]);
    assert!(ok && only.join("books").exists() && !only.join("views").exists(), "{out}");
    assert!(out.contains("alerts") && out.contains("risk"), "{out}");
    let (ok, out) = cli(&["replay", "--data-dir", &data, "--into", into.to_str().unwrap()]);
    assert!(!ok && out.contains("exists"), "{out}");

    // Explain: every event of m0 with the running balance; as of T0 without the late earn.
    let (ok, out) = cli(&["explain", "--data-dir", &data, "--account", "shop/points/m0"]);
    assert!(ok, "{out}");
    assert!(out.contains("PointsEarned") && out.contains("PointsSpent") && out.contains("late="), "{out}");
    assert!(out.contains("shop/points/m0: 17 events; available 1720"), "{out}");
    let (ok, out) = cli(&["explain", "--data-dir", &data, "--account", "shop/points/m0", "--as-of", &until]);
    assert!(ok && out.contains("available 720") && !out.contains("late="), "{out}");
    // As of a position: right after m0's second record.
    let second = out.lines().filter(|l| l.contains("PointsEarned") || l.contains("PointsSpent")).nth(1).unwrap();
    let offset = second.split_whitespace().next().unwrap().to_string();
    let (ok, out) = cli(&["explain", "--data-dir", &data, "--account", "shop/points/m0", "--as-of-position", &offset]);
    assert!(ok && out.contains("shop/points/m0: 2 events"), "{out}");
    assert!(out.contains("growth") && out.contains("level"), "{out}");
    let (ok, out) = cli(&["explain", "--data-dir", &data, "--account", "shop-points-m0"]);
    assert!(!ok && out.contains("TENANT/PROGRAMME/MEMBER"), "{out}");

    // Corrupt one account row of the live views.
    {
        let views = Db::open(&dir.path().join("views"), store::VIEW_CFS).unwrap();
        let key = store::account_key(&AccountKey::new("shop", "points", "m2"));
        // The header row (the account's counters) at the account's key.
        let mut a = codec::decode_account(&views.get(Cf::Accounts, &key).unwrap().unwrap()).unwrap();
        a.debt += 1;
        let mut b = store::Batch::default();
        b.put(Cf::Accounts, &key, &codec::encode_account_header(&a));
        views.write(b).unwrap();
    }
    let (ok, out) = cli(&["verify", "--data-dir", &data]);
    assert!(!ok, "verify must fail: {out}");
    assert!(out.contains("accounts: shop/points/m2 (values differ)"), "{out}");
    assert!(out.contains("books verified"), "{out}");
    // A corrupted risk view row in the books database is caught as well.
    {
        let books = Db::open(&dir.path().join("books"), store::BOOK_CFS).unwrap();
        let (k, _) = books.all(Cf::Risk).unwrap().into_iter().next().expect("a risk row");
        let mut b = store::Batch::default();
        b.put(Cf::Risk, &k, b"garbage");
        books.write(b).unwrap();
    }
    let (ok, out) = cli(&["verify", "--data-dir", &data]);
    assert!(!ok && out.contains("books DIFFER") && out.contains("risk:"), "{out}");
    let (ok, out) = cli(&["verify", "--data-dir", "/nonexistent/dir"]);
    assert!(!ok && out.contains("opening"), "{out}");
}

#[test]
fn schema_writes_the_logs_proto_and_its_descriptor_set_for_outside_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = cli(&["schema", "--out", dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    let proto = std::fs::read_to_string(dir.path().join("points/log/v1/log.proto")).unwrap();
    assert_eq!(proto, include_str!("../proto/points/log/v1/log.proto"));
    let set = std::fs::read(dir.path().join("points-log-v1.binpb")).unwrap();
    let names = |needle: &[u8]| set.windows(needle.len()).any(|w| w == needle);
    assert!(names(b"points/log/v1/log.proto") && names(b"AccountRecord") && names(b"ControlRecord"));
}
