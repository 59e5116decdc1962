//! `verify`: the views and the books rebuilt from offset zero up to where
//! the live ones stand, and compared byte for byte; the first differing key
//! is named.

use anyhow::Context;

use super::Source;
use crate::store::{self, Db};

pub fn run(source: &Source) -> anyhow::Result<bool> {
    let log = source.events()?;
    let live = source.views()?;
    let (folded, difference) = super::audit::verify(log.as_ref(), &live)?;
    let mut ok = match difference {
        None => {
            println!("views verified: a rebuild of {folded} records from offset zero is byte-identical");
            true
        }
        Some(d) => {
            println!("views DIFFER from a rebuild of {folded} records: first difference at {d}");
            false
        }
    };
    let books_dir = source.books_dir();
    if books_dir.exists() {
        let books = Db::open_read_only(&books_dir, store::BOOK_CFS)
            .with_context(|| format!("opening the books in {}", books_dir.display()))?;
        let registry = source.registry()?;
        match crate::finance::reconciler::verify(log.as_ref(), &registry, &live, &books)? {
            (folded, None) => {
                println!("books verified: a rebuild of {folded} records from offset zero is byte-identical")
            }
            (folded, Some(d)) => {
                println!("books DIFFER from a rebuild of {folded} records: first difference at {d}");
                ok = false;
            }
        }
    }
    Ok(ok)
}
