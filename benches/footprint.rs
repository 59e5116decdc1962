//! What an account costs: the bytes a decoded account holds on the heap
//! (counted by the allocator, requested sizes) and its stored row, for the
//! members issue 34 names, beside the estimate the writers' cache budget
//! counts (`Account::bytes`). Run: `cargo bench --bench footprint`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};

use points_ledger::domain::{decide, Account, AccountKey, Command, CommandBody, Programme};
use points_ledger::store::snapshot;

/// The service's allocator, counting the bytes it holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const T0: i64 = 1_773_100_800_000;
const DAY: i64 = 86_400_000;
/// Accounts built per profile (the figure is their mean).
const ACCOUNTS: usize = 200;

/// A request id as callers send them: 36 characters, like a UUID.
fn request_id(member: usize, i: usize) -> String {
    format!("{member:08x}-{i:04x}-4000-a000-{:012x}", member * 7919 + i)
}

/// What a member's history is made of.
#[derive(Clone, Copy)]
struct Profile {
    name: &'static str,
    earns: usize,
    spends: usize,
    refunds: usize,
}

/// The member's commands: earns (each a lot expiring in a year), spends of
/// a little less than an earn, and refunds of the first spends, interleaved.
fn history(member: usize, p: Profile) -> Vec<Command> {
    let account = AccountKey::new("shop", "points", &format!("member-{member:07}"));
    let mut out = Vec::new();
    let (mut spent, mut refunded) = (Vec::new(), 0);
    let total = p.earns + p.spends + p.refunds;
    let (mut e, mut s) = (0, 0);
    for i in 0..total {
        let id = request_id(member, i);
        let body = if e < p.earns && (s * p.earns >= e * p.spends.max(1) || s >= p.spends) {
            e += 1;
            CommandBody::Earn {
                points: 100,
                reason: "purchase".into(),
                order_ref: Some(format!("order-{member}-{i}")),
                growth: 100,
                expires_at: Some(T0 + 365 * DAY),
            }
        } else if s < p.spends {
            s += 1;
            spent.push(id.clone());
            CommandBody::Spend { points: 90, order_ref: Some(format!("order-{member}-{i}")), order_cash_amount: None }
        } else if refunded < p.refunds.min(spent.len()) {
            refunded += 1;
            CommandBody::Refund { spend_id: spent[refunded - 1].clone(), points: 90 }
        } else {
            continue;
        };
        out.push(Command { request_id: id, account: account.clone(), body, context: Default::default() });
    }
    out
}

fn build(programme: &Programme, commands: &[Command]) -> Account {
    let mut a = Account::default();
    for (i, cmd) in commands.iter().enumerate() {
        if let Ok(events) = decide(Some(programme), &a, cmd, T0 + i as i64 * 60_000) {
            events.iter().for_each(|e| a.apply(e));
        }
    }
    a
}

fn measure(programme: &Programme, p: Profile, accounts: usize) {
    let histories: Vec<Vec<Command>> = (0..accounts).map(|m| history(m, p)).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let built: Vec<Account> = histories.iter().map(|h| build(programme, h)).collect();
    let heap = LIVE.load(Ordering::Relaxed) - before - (accounts * std::mem::size_of::<Account>()) as isize;
    let per_account = heap as usize / accounts + std::mem::size_of::<Account>();
    let stored: usize = built.iter().map(|a| snapshot::encode_account(a).len()).sum::<usize>() / accounts;
    let estimated: usize = built.iter().map(Account::bytes).sum::<usize>() / accounts;
    let a = &built[0];
    let with_points = a.lots.values().filter(|l| l.spendable() > 0).count();
    println!(
        "{:<34} {:>6} lots ({:>5} with points) {:>5} earns {:>4} spends | decoded {:>8} B (estimate {:>8} B) | stored {:>8} B",
        p.name,
        a.lots.len(),
        with_points,
        a.earns.len(),
        a.spends.len(),
        per_account,
        estimated,
        stored
    );
    drop(built);
}

fn main() {
    let programme = Programme::example("shop", "points");
    println!("Account struct itself: {} B (inline, counted in 'decoded')", std::mem::size_of::<Account>());
    let profiles = [
        Profile { name: "bench member (4 earns, 1 spend)", earns: 4, spends: 1, refunds: 0 },
        Profile { name: "100 commands (60 earns, 35 spends, 5 refunds)", earns: 60, spends: 35, refunds: 5 },
        Profile { name: "20 lots with points, 100 commands", earns: 56, spends: 40, refunds: 4 },
        Profile { name: "1,000 commands (700/280/20)", earns: 700, spends: 280, refunds: 20 },
    ];
    for p in profiles {
        measure(&programme, p, ACCOUNTS);
    }
    // The worst case the per-account limits allow: lots with points are
    // bounded (LOTS_WITH_POINTS_MAX); the history of earns and spends is not.
    measure(&programme, Profile { name: "10,000 earns, no spend", earns: 10_000, spends: 0, refunds: 0 }, 2);
}
