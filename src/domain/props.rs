//! Property tests of `decide` and `apply` over random command sequences on
//! one account, under both clawback policies: every accepted command keeps
//! the account's invariants, and money is conserved as a member sees it.
//!
//! The property that matters to whoever farms points: what a member can
//! spend never exceeds what was earned (and credited) and not reversed,
//! whatever sequence of spends, holds, refunds, releases, reversals and
//! expiries came between. Under `CLAWBACK_POLICY_ALLOW_DEBT` it is also
//! exact: available + reserved − debt is what was earned and not reversed,
//! minus what was spent and not refunded, minus what expired, plus the
//! adjustments, minus what penalties took; and while debt is owed nothing
//! is spendable. Activities run under earning rules that earn, multiply,
//! cap and penalise.

use proptest::prelude::*;

use super::*;

/// 2026-03-10T00:00:00Z
const T0: Millis = 1_773_100_800_000;

#[derive(Clone, Debug)]
enum Op {
    Earn {
        points: Points,
        expires_in_hours: Option<u8>,
    },
    Spend {
        points: Points,
    },
    Reserve {
        points: Points,
        timeout_minutes: u8,
    },
    Capture {
        which: u8,
        points: Option<Points>,
    },
    Release {
        which: u8,
    },
    Refund {
        which: u8,
        points: Points,
    },
    Reverse {
        which: u8,
        points: Points,
    },
    Adjust {
        points: Points,
    },
    ExpireAll,
    Advance {
        minutes: u16,
    },
    /// An activity of one of [`rules`]' actions.
    Activity {
        which: u8,
        amount: u16,
    },
}

/// The earning rules the activities run under: a login (+1, twice a day),
/// a payment by amount (tagged ×2 under a campaign), a report (−12) and a
/// penalty that also takes growth.
fn rules(p: &mut Programme) {
    let rule = |id: &str, points: Points, growth: i64| EarningRule {
        rule_id: id.into(),
        action: id.into(),
        points,
        growth,
        ..Default::default()
    };
    let mut pay = rule("pay", 0, 0);
    pay.amount_rates.insert("*".into(), AmountRate { amount_minor: 100, points: 1, growth: 1 });
    pay.tag_multipliers_percent.insert("x2".into(), 200);
    p.earning_rules = vec![
        EarningRule { daily_count_max: 2, ..rule("login", 1, 1) },
        pay,
        rule("reported", -12, 0),
        EarningRule { daily_points_max: 40, ..rule("complaint", -25, -3) },
    ];
    p.campaigns = vec![Campaign {
        campaign_id: "double".into(),
        starts_at: Some(T0),
        ends_at: Some(T0 + 86_400_000),
        actions: vec!["pay".into()],
        multiplier_percent: 200,
    }];
}

const ACTIONS: [&str; 4] = ["login", "pay", "reported", "complaint"];

fn op() -> impl Strategy<Value = Op> {
    let pts = 1i64..300;
    prop_oneof![
        4 => (pts.clone(), prop::option::of(1u8..72)).prop_map(|(points, e)| Op::Earn { points, expires_in_hours: e }),
        3 => pts.clone().prop_map(|points| Op::Spend { points }),
        2 => (pts.clone(), 1u8..120).prop_map(|(points, t)| Op::Reserve { points, timeout_minutes: t }),
        2 => (any::<u8>(), prop::option::of(pts.clone())).prop_map(|(which, points)| Op::Capture { which, points }),
        1 => any::<u8>().prop_map(|which| Op::Release { which }),
        3 => (any::<u8>(), pts.clone()).prop_map(|(which, points)| Op::Refund { which, points }),
        3 => (any::<u8>(), pts.clone()).prop_map(|(which, points)| Op::Reverse { which, points }),
        1 => (-150i64..150).prop_map(|p| Op::Adjust { points: if p == 0 { 1 } else { p } }),
        1 => Just(Op::ExpireAll),
        2 => (1u16..3000).prop_map(|minutes| Op::Advance { minutes }),
        3 => (any::<u8>(), any::<u16>()).prop_map(|(which, amount)| Op::Activity { which, amount }),
    ]
}

/// What the member was given and had taken, counted from the accepted
/// commands (and, for expiry, which depends on which lots paid, from the
/// events), independently of the account's own totals.
#[derive(Default, Debug)]
struct Tally {
    earned: Points,
    reversed: Points,
    credited: Points,
    debited: Points,
    spent: Points,
    refunded: Points,
    expired: Points,
    /// Taken by penalties (from lots, or as debt).
    penalized: Points,
    /// Reversals written off and not recovered since.
    written_off: Points,
}

impl Tally {
    fn expired_in(&mut self, events: &[Event]) {
        for e in events {
            if let Event::PointsExpired { points, .. } = e {
                self.expired += points;
            }
        }
    }
}

fn pick(ids: &[String], which: u8) -> Option<String> {
    (!ids.is_empty()).then(|| ids[which as usize % ids.len()].clone())
}

fn check(a: &Account, t: &Tally, policy: ClawbackPolicy) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.check_invariants_fully(), Ok(()));
    // A reversal writes off points that are gone, and a penalty may be what
    // took them: those are not taken twice. A penalty may leave debt
    // (ALLOW_DEBT): the bound is never below 0.
    let bound = t.earned + t.credited - t.reversed - t.penalized + t.written_off.min(t.penalized);
    prop_assert!(
        a.available() <= bound.max(0),
        "spendable {} > earned {} + credited {} - reversed {} - penalized {}: {:?}",
        a.available(),
        t.earned,
        t.credited,
        t.reversed,
        t.penalized,
        t
    );
    if policy == ClawbackPolicy::AllowDebt {
        let net = t.earned - t.reversed - t.penalized - (t.spent - t.refunded) - t.expired + t.credited - t.debited;
        prop_assert_eq!(a.available() + a.reserved() - a.debt, net, "{:?}", t);
        prop_assert!(a.available() <= net.max(0), "spendable {} > {} ({:?})", a.available(), net, t);
        prop_assert!(a.debt == 0 || a.available() == 0, "debt {} beside {} spendable", a.debt, a.available());
    }
    Ok(())
}

/// The command an op stands for (advancing the clock for `Advance`), or
/// `None` when it names a spend, hold or earn the account does not have.
fn body_of(op: &Op, now: &mut Millis, earns: &[String], spends: &[String], holds: &[String]) -> Option<CommandBody> {
    Some(match op {
        Op::Advance { minutes } => {
            *now += i64::from(*minutes) * 60_000;
            CommandBody::Tick
        }
        Op::Earn { points, expires_in_hours } => CommandBody::Earn {
            points: *points,
            reason: "purchase".into(),
            order_ref: None,
            growth: 0,
            expires_at: expires_in_hours.map(|h| *now + i64::from(h) * 3_600_000),
        },
        Op::Spend { points } => CommandBody::Spend { points: *points, order_ref: None, order_cash_amount: None },
        Op::Reserve { points, timeout_minutes } => CommandBody::Reserve {
            points: *points,
            order_ref: "o".into(),
            timeout_seconds: i64::from(*timeout_minutes) * 60,
            order_cash_amount: None,
        },
        Op::Capture { which, points } => CommandBody::Capture { reservation_id: pick(holds, *which)?, points: *points },
        Op::Release { which } => CommandBody::Release { reservation_id: pick(holds, *which)? },
        Op::Refund { which, points } => CommandBody::Refund { spend_id: pick(spends, *which)?, points: *points },
        Op::Reverse { which, points } => {
            CommandBody::ReverseEarn { earn_id: pick(earns, *which)?, points: *points, growth: 0 }
        }
        Op::Adjust { points } => CommandBody::Adjust { points: *points, operator: "ops".into(), reason: "fix".into() },
        Op::ExpireAll => CommandBody::Expire { all_points: true, reason: "recycle".into(), operator: "risk".into() },
        Op::Activity { which, amount } => CommandBody::RecordActivity(Activity {
            action: ACTIONS[*which as usize % ACTIONS.len()].into(),
            amount_minor: i64::from(*amount),
            product_tags: if which % 2 == 0 { vec!["x2".into()] } else { Vec::new() },
            ..Default::default()
        }),
    })
}

fn run(policy: ClawbackPolicy, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut p = Programme::example("shop", "points");
    p.validity_days = 0;
    p.clawback_policy = policy;
    rules(&mut p);
    let key = AccountKey::new("shop", "points", "m1");
    let (mut a, mut t, mut now) = (Account::default(), Tally::default(), T0);
    let (mut earns, mut spends, mut holds): (Vec<String>, Vec<String>, Vec<String>) = Default::default();
    for (n, op) in ops.into_iter().enumerate() {
        let id = format!("r{n}");
        let Some(body) = body_of(&op, &mut now, &earns, &spends, &holds) else { continue };
        let command =
            Command { request_id: id.clone(), account: key.clone(), body: body.clone(), context: Default::default() };
        let Ok(events) = decide(Some(&p), &a, &command, now) else { continue };
        events.iter().for_each(|e| a.apply(e));
        t.expired_in(&events);
        for e in &events {
            match e {
                Event::PointsEarned { granted, .. } => {
                    t.earned += granted;
                    earns.push(id.clone());
                }
                Event::PointsSpent { points, .. } => {
                    t.spent += points;
                    spends.push(id.clone());
                }
                Event::PointsReserved { .. } => holds.push(id.clone()),
                Event::ReservationCaptured { points, .. } => {
                    t.spent += points;
                    spends.push(id.clone());
                }
                Event::PenaltyApplied { taken, debt_added, .. } => t.penalized += sum(taken) + debt_added,
                Event::EarnReversed { written_off, .. } => t.written_off += written_off,
                Event::PointsRecovered { written_off, .. } => t.written_off -= written_off,
                _ => {}
            }
        }
        match body {
            CommandBody::Refund { points, .. } => t.refunded += points,
            CommandBody::ReverseEarn { points, .. } => t.reversed += points,
            CommandBody::Adjust { points, .. } if points > 0 => t.credited += points,
            CommandBody::Adjust { points, .. } => t.debited -= points,
            _ => {}
        }
        check(&a, &t, policy)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_of_commands_lets_a_member_spend_more_than_was_earned_and_not_reversed(
        debt in any::<bool>(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(if debt { ClawbackPolicy::AllowDebt } else { ClawbackPolicy::WithinBalance }, ops)?;
    }
}
