//! Finance: the daily books per programme (`books`), folded from the log by
//! the reconciliation consumer (`reconciler`, its own positions in its own
//! database, `books/`) and checked against the balance view at the same log
//! position; the risk view and its alerts (`risk`), folded in the same
//! WriteBatch; the worker that raises members' alerts in their partitions
//! (`raiser`); and the reports over the books (`reports`: roll-ups, the
//! expiry forecast, CSV and tables).

pub mod audit;
pub mod books;
pub mod raiser;
pub mod reconciler;
pub mod reports;
pub mod risk;
