//! Arbitrary bytes where a record or a stored row should be: the log's
//! decoder, the arbiter and the stored-row decoders never panic; each
//! gives a clear answer (a record, a decision, or an error). Half the
//! inputs are valid records with a few bytes changed, so decoding goes deep.

use proptest::collection::vec;
use proptest::prelude::*;

use points_ledger::domain::{Account, AccountKey, Event, LotAmount};
use points_ledger::log::arbiter::{Admitted, Arbiter, Home};
use points_ledger::log::codec;
use points_ledger::log::record::{partition_for, AccountRecord};
use points_ledger::store::snapshot;

/// Length of the arbitrary inputs, at most.
const INPUT_BYTES_MAX: usize = 512;

fn a_record() -> Vec<u8> {
    codec::encode_account_record(&AccountRecord {
        epoch: 3,
        request_id: "r1".into(),
        account: AccountKey::new("shop", "points", "ann"),
        programme_version: 1,
        at: 1_773_100_800_000,
        fingerprint: 7,
        system: false,
        events: vec![Event::PointsSpent {
            spend_id: "r1".into(),
            order_ref: Some("o".into()),
            points: 5,
            lots: vec![LotAmount::new("e1", 5)],
            order_cash_minor: 0,
        }],
        context: Default::default(),
        cap_mode: Default::default(),
    })
}

fn an_account_row() -> Vec<u8> {
    let mut a = Account::default();
    a.apply(&Event::PointsEarned {
        lot_id: "e1".into(),
        reason: "purchase".into(),
        order_ref: None,
        requested: 10,
        granted: 10,
        forfeited: 0,
        debt_repaid: 0,
        expires_at: Some(1_773_100_800_000),
        growth: 1,
        day: 20_522,
        pending: false,
    });
    snapshot::encode_account(&a)
}

/// Arbitrary bytes, or `valid` with up to 8 bytes overwritten and a cut.
fn bytes_like(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    prop_oneof![
        vec(any::<u8>(), 0..INPUT_BYTES_MAX),
        (vec((0..n, any::<u8>()), 0..8), 0..=n).prop_map(move |(edits, cut)| {
            let mut b = valid.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            b.truncate(cut.max(1));
            b
        }),
    ]
}

proptest! {
    #[test]
    fn the_record_decoders_answer_any_bytes_without_a_panic(bytes in bytes_like(a_record())) {
        let _ = codec::decode_partition_record(&bytes);
        let _ = codec::decode_account_record(&bytes);
        let _ = codec::decode_control_record(&bytes);
    }

    #[test]
    fn the_arbiter_decides_on_any_bytes_and_a_quarantine_leaves_it_as_it_was(
        bytes in bytes_like(a_record()),
        epoch in 0u64..5,
        partition in 0u32..3,
    ) {
        let mut arbiter = Arbiter { epoch, ..Default::default() };
        let before = arbiter.clone();
        match arbiter.admit_bytes(&bytes, Home { partition, partitions: 3 }) {
            Admitted::Quarantined(q) => {
                prop_assert!(!q.why.is_empty());
                prop_assert_eq!(arbiter, before);
            }
            Admitted::Record(r) => {
                prop_assert_eq!(r.epoch, epoch);
                prop_assert_eq!(partition_for(&r.account, 3), partition);
            }
            Admitted::Claim(_) | Admitted::Released(_) | Admitted::Void => {}
        }
    }

    #[test]
    fn the_stored_row_decoders_answer_any_bytes_with_an_error_not_a_panic(bytes in bytes_like(an_account_row())) {
        let _ = snapshot::decode_account(&bytes);
        let _ = snapshot::decode_account_with_tail(&bytes);
        let _ = snapshot::decode_statement_row(&bytes);
        let _ = snapshot::split_statement_page(&bytes);
        let _ = snapshot::decode_request(&bytes);
        for piece in snapshot::Piece::ALL {
            let _ = snapshot::decode_piece_into(&mut Account::default(), piece, "p".into(), &bytes);
        }
    }
}
