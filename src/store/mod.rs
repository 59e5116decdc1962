//! RocksDB, and only here. Two databases: the partitions' state (`views/`:
//! the views queries read, which are the writers' state as well, plus the
//! idempotency records, the due index and the issuance only writers read)
//! and the reconciliation consumer's books, risk view and alerts (`books/`).
//! Both are derived from the log: deleting either loses nothing but time.
//!
//! - `keys`: the key layouts and readers' positions;
//! - `accounts`: how an account is kept (one row, or a header and pieces);
//! - `snapshot`: the encoding of stored accounts, replies and statement rows
//!   (`points.state.v1`); other rows go through [`encode_row`] / [`decode_row`].
//!
//! Writes are not synced: each WriteBatch carries the log position it brings
//! its state to, and RocksDB's WAL recovers a prefix of batches, so after a
//! crash a reader resumes exactly where its state stops. (Without the WAL,
//! flushing atomically, a crash would lose only what the log has anyway; but
//! the tools that read a running service's databases, which see what its WAL
//! holds, would see only the last flush, and it saved 1-2 % of a command.)

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};
use sha2::{Digest, Sha256};

pub mod accounts;
pub mod books;
pub mod packed;
mod keys;
pub mod snapshot;
pub mod risk;
pub mod views;
pub mod writer;

pub use keys::*;

use crate::log::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("stored value unreadable: {0}")]
    Codec(#[from] CodecError),
    /// A row or key shorter than its layout (or otherwise not of it).
    #[error("stored row does not hold {0}")]
    Layout(&'static str),
}

/// A stored row (a `points.state.v1` message) as bytes.
pub fn encode_row<M: prost::Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// A stored row back from its bytes.
pub fn decode_row<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, CodecError> {
    Ok(M::decode(bytes)?)
}

/// Column families: of the partitions' state ([`VIEW_CFS`]) and of the
/// books ([`BOOK_CFS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    Accounts,
    Requests,
    Due,
    Entries,
    Expiring,
    Meta,
    Books,
    Risk,
    Alerts,
    Issuance,
    /// Alerts of members not raised in their partition yet (delivery
    /// state, not derived state: `verify` does not compare it).
    Outbox,
    /// The admin acts of the account log, by programme and time (the
    /// audit log; those of the control stream are in the registry).
    Audit,
}

/// Column families there are.
const CF_COUNT: usize = 12;

impl Cf {
    pub fn name(self) -> &'static str {
        match self {
            Cf::Accounts => "accounts",
            Cf::Requests => "requests",
            Cf::Due => "due",
            Cf::Entries => "entries",
            Cf::Expiring => "expiring",
            Cf::Meta => "meta",
            Cf::Books => "books",
            Cf::Risk => "risk",
            Cf::Alerts => "alerts",
            Cf::Issuance => "issuance",
            Cf::Outbox => "outbox",
            Cf::Audit => "audit",
        }
    }

    /// Whether the column family is read by key (rather than only scanned),
    /// so bloom filters pay for themselves.
    fn point_lookups(self) -> bool {
        matches!(self, Cf::Accounts | Cf::Requests | Cf::Meta | Cf::Risk | Cf::Issuance)
    }

    /// Whether rows of the column family can be added to at their end
    /// ([`Batch::append_vec`]): a statement's last page grows by the
    /// entries of each batch instead of being written whole again.
    pub fn appends(self) -> bool {
        matches!(self, Cf::Entries)
    }
}

/// The partitions' state (`views/`): the views queries read (accounts,
/// statements, the expiry index) and what only the writers read (the
/// idempotency records, the due index, the programme issuance), with one
/// cursor per partition for all of them.
pub const VIEW_CFS: &[Cf] = &[Cf::Accounts, Cf::Entries, Cf::Expiring, Cf::Meta, Cf::Requests, Cf::Due, Cf::Issuance];
/// The column families a rebuild of the views writes, and `verify` compares.
pub const VIEW_DIGEST_CFS: &[Cf] = &[Cf::Accounts, Cf::Entries, Cf::Expiring, Cf::Meta];
/// The reconciliation consumer's database: partial books, the risk view,
/// alerts, and its positions.
pub const BOOK_CFS: &[Cf] = &[Cf::Books, Cf::Risk, Cf::Alerts, Cf::Meta, Cf::Outbox, Cf::Audit];
/// The column families of the books a rebuild writes, and `verify` compares.
pub const BOOK_DIGEST_CFS: &[Cf] = &[Cf::Books, Cf::Risk, Cf::Alerts, Cf::Meta, Cf::Audit];

/// Memtable budget of each database (writer state, views, books).
pub const DB_WRITE_BUFFER_BYTES: usize = 96 << 20;
/// Block cache (data, index and filter blocks) of each database.
pub const DB_BLOCK_CACHE_BYTES: usize = 32 << 20;

/// A row of a table file to ingest: (key, value or `None` to delete; in a
/// column family that [appends](Cf::appends), the bytes to add).
pub type TableRow = (Vec<u8>, Option<Vec<u8>>);

pub struct Db {
    db: DB,
    cfs: &'static [Cf],
    /// False for a database being rebuilt from scratch (see [`Db::open_rebuild`]).
    wal: bool,
    /// Table files ingested so far (names scratch files uniquely).
    ingests: std::sync::atomic::AtomicU64,
    /// Rows (puts and deletes) written through [`Db::write`] since opening,
    /// and their key and value bytes: what the memtables took.
    rows_written: std::sync::atomic::AtomicU64,
    bytes_written: std::sync::atomic::AtomicU64,
    /// Rows written per column family (indexed by `Cf as usize`).
    rows_by_cf: [std::sync::atomic::AtomicU64; CF_COUNT],
    /// For the bench's no-database bound only: writes are counted and
    /// dropped (see [`Db::discard_writes`]).
    discard: std::sync::atomic::AtomicBool,
    /// Bulk loads going on ([`Db::begin_bulk_load`]).
    bulk_loads: std::sync::Mutex<usize>,
}

/// RocksDB's compactions and write stalls at one moment ([`Db::condition`]).
#[derive(Clone, Debug, Default)]
pub struct Condition {
    pub running_compactions: u64,
    pub pending_compaction_bytes: u64,
    pub write_stopped: bool,
    /// Bytes a second writes are slowed to (0: not slowed).
    pub delayed_write_rate: u64,
    /// Stalls and slowdowns since opening, by cause (RocksDB's names).
    pub stalls: Vec<(String, u64)>,
}

/// The counts of `rocksdb.db-write-stall-stats` (RocksDB 11 writes `Write
/// Stall (count): name: count, name: count` lines), leaving out zeros.
fn parse_stall_stats(text: &str) -> Vec<(String, u64)> {
    text.split(['\n', ',', ';'])
        .filter_map(|pair| {
            let pair = pair.trim();
            let pair = pair.strip_prefix("Write Stall (count):").unwrap_or(pair);
            let (name, n) = pair.rsplit_once([':', '='])?;
            let n = n.trim().parse::<u64>().ok().filter(|n| *n > 0)?;
            Some((name.trim().to_string(), n))
        })
        .collect()
}

/// A key and its value, as stored.
pub type Row = (Vec<u8>, Vec<u8>);

/// A set of changes applied atomically.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Cf, Vec<u8>, Op)>,
}

enum Op {
    Put(Vec<u8>),
    Delete,
    /// Bytes added at the end of the row's value ([`Cf::appends`]).
    Append(Vec<u8>),
}

impl Op {
    fn len(&self) -> usize {
        match self {
            Op::Put(v) | Op::Append(v) => v.len(),
            Op::Delete => 0,
        }
    }
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.put_vec(cf, key.to_vec(), value.to_vec());
    }
    /// `put` of a key and value already built (no copy).
    pub fn put_vec(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((cf, key, Op::Put(value)));
    }
    pub fn delete_vec(&mut self, cf: Cf, key: Vec<u8>) {
        self.ops.push((cf, key, Op::Delete));
    }
    /// `put_vec` of `Some` value, `delete_vec` of `None`.
    pub fn put_or_delete(&mut self, cf: Cf, key: Vec<u8>, value: Option<Vec<u8>>) {
        debug_assert!(!cf.appends() || value.is_none(), "a put in {}, which appends", cf.name());
        self.ops.push((cf, key, value.map_or(Op::Delete, Op::Put)));
    }
    /// A row of [`crate::projection::ViewRow`]'s shape: a put of `Some`
    /// value (appended in a column family that [appends](Cf::appends)), a
    /// delete of `None`.
    pub fn view_row(&mut self, cf: Cf, key: Vec<u8>, value: Option<Vec<u8>>) {
        match value {
            Some(v) if cf.appends() => self.append_vec(cf, key, v),
            v => self.put_or_delete(cf, key, v),
        }
    }
    /// Adds `bytes` at the end of the row at `key` (a row not there yet is
    /// `bytes`), without reading it: only in a column family that
    /// [appends](Cf::appends).
    pub fn append_vec(&mut self, cf: Cf, key: Vec<u8>, bytes: Vec<u8>) {
        assert!(cf.appends(), "column family {} does not append", cf.name());
        self.ops.push((cf, key, Op::Append(bytes)));
    }
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.delete_vec(cf, key.to_vec());
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The merge of [`Op::Append`]s: the bytes one after the other.
fn concatenate(_key: &[u8], existing: Option<&[u8]>, operands: &rocksdb::MergeOperands) -> Option<Vec<u8>> {
    let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(existing.unwrap_or_default());
    operands.iter().for_each(|o| out.extend_from_slice(o));
    Some(out)
}

/// Options of every column family, with `cache` for its blocks. Index and
/// filter blocks live in the bounded cache too (so memory does not grow with
/// the number of table files), partitioned: a lookup loads one small filter
/// and index block, not a whole file's (with one filter per file, a cache
/// under pressure re-read and re-checksummed megabytes per lookup: 4,000
/// commands/s instead of 15,000 with 1M accounts, BENCHMARKS.md). Tables and
/// memtables of the column families read by key have whole-key bloom filters:
/// each command looks up a request id that is almost never there; scanned
/// ones (statements, indexes, books) have none.
fn cf_options(cf: Cf, cache: &rocksdb::Cache) -> Options {
    let mut o = Options::default();
    o.set_level_zero_slowdown_writes_trigger(L0_SLOWDOWN_FILES);
    o.set_level_zero_stop_writes_trigger(L0_STOP_FILES);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut t = rocksdb::BlockBasedOptions::default();
    t.set_block_cache(cache);
    if cf.point_lookups() {
        t.set_bloom_filter(10.0, false);
        o.set_memtable_prefix_bloom_ratio(0.02);
        o.set_memtable_whole_key_filtering(true);
    }
    t.set_cache_index_and_filter_blocks(true);
    t.set_pin_l0_filter_and_index_blocks_in_cache(true);
    t.set_partition_filters(true);
    t.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    t.set_pin_top_level_index_and_filter(true);
    o.set_block_based_table_factory(&t);
    if cf.appends() {
        o.set_merge_operator_associative("points-ledger.append", concatenate);
    }
    o
}

/// The least key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Table files in level 0 at which writes slow down, and stop (RocksDB's
/// defaults). A rebuild stacks its ingested files there far beyond these
/// and compacts once at the end ([`Db::open_rebuild`]).
const L0_SLOWDOWN_FILES: i32 = 20;
const L0_STOP_FILES: i32 = 36;

impl Db {
    pub fn open(path: &Path, cfs: &'static [Cf]) -> Result<Db, StoreError> {
        Db::open_with(path, cfs, false)
    }

    fn open_with(path: &Path, cfs: &'static [Cf], bulk: bool) -> Result<Db, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // All memtables of this database together, so memory stays bounded
        // however many column families it has.
        opts.set_db_write_buffer_size(DB_WRITE_BUFFER_BYTES);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        if bulk {
            // The one compaction at the end, split by key range over the cores.
            opts.set_max_subcompactions(std::thread::available_parallelism().map_or(1, |n| n.get()) as u32);
        }
        let cache = rocksdb::Cache::new_lru_cache(DB_BLOCK_CACHE_BYTES);
        let descriptors = cfs.iter().map(|cf| {
            let mut o = cf_options(*cf, &cache);
            if bulk {
                o.set_disable_auto_compactions(true);
                o.set_level_zero_slowdown_writes_trigger(i32::MAX);
                o.set_level_zero_stop_writes_trigger(i32::MAX);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, descriptors)?;
        Ok(Db {
            db,
            cfs,
            wal: !bulk,
            ingests: Default::default(),
            rows_written: Default::default(),
            bytes_written: Default::default(),
            rows_by_cf: Default::default(),
            discard: Default::default(),
            bulk_loads: Default::default(),
        })
    }

    /// Opens a fresh database that a rebuild fills from the log: writes skip
    /// the WAL (a crash leaves a partial directory that is simply rebuilt
    /// again), and nothing is compacted until [`Db::finish_rebuild`]. The
    /// ingested table files of a column family overlap each other (every
    /// file spans all accounts), so they stack up in level 0; compacting as
    /// they arrive would merge the whole column family again every few
    /// files, quadratic in the log's length. One merge at the end writes
    /// each row once.
    pub fn open_rebuild(path: &Path, cfs: &'static [Cf]) -> Result<Db, StoreError> {
        Db::open_with(path, cfs, true)
    }

    /// The end of a rebuild: flushes, merges every column family's files into
    /// sorted levels in one compaction, and turns automatic compaction back
    /// on, so the database is what a live one would be.
    pub fn finish_rebuild(&self) -> Result<(), StoreError> {
        self.finish_rebuild_of(self.cfs)
    }

    /// [`Db::finish_rebuild`], compacting only the column families in `compact`.
    fn finish_rebuild_of(&self, compact: &[Cf]) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.flush()?;
        let (slowdown, stop) = (L0_SLOWDOWN_FILES.to_string(), L0_STOP_FILES.to_string());
        for cf in self.cfs {
            if compact.contains(cf) {
                self.db.compact_range_cf(self.cf(*cf), None::<&[u8]>, None::<&[u8]>);
            }
            self.db.set_options_cf(
                self.cf(*cf),
                &[
                    ("disable_auto_compactions", "false"),
                    ("level0_slowdown_writes_trigger", &slowdown),
                    ("level0_stop_writes_trigger", &stop),
                ],
            )?;
        }
        tracing::info!(path = %self.db.path().display(), elapsed_ms = started.elapsed().as_millis() as u64, "rebuilt database compacted");
        Ok(())
    }

    /// A load that ingests many overlapping table files into this live
    /// database begins: the first of those going on pauses automatic
    /// compaction and the level-0 triggers (which would stall every writer),
    /// as a rebuild's database has them, so the files are merged once at
    /// the end instead of again and again on the way.
    pub fn begin_bulk_load(&self) -> Result<(), StoreError> {
        let mut loads = self.bulk_loads.lock().expect("bulk loads lock");
        if *loads == 0 {
            let max = i32::MAX.to_string();
            for cf in self.cfs {
                self.db.set_options_cf(
                    self.cf(*cf),
                    &[
                        ("disable_auto_compactions", "true"),
                        ("level0_slowdown_writes_trigger", &max),
                        ("level0_stop_writes_trigger", &max),
                    ],
                )?;
            }
        }
        *loads += 1;
        Ok(())
    }

    /// A bulk load ends: the last one merges the files of the column
    /// families in `compact` in one compaction each, and turns automatic
    /// compaction back on (which merges the others' in the background).
    pub fn end_bulk_load(&self, compact: &[Cf]) -> Result<(), StoreError> {
        let mut loads = self.bulk_loads.lock().expect("bulk loads lock");
        *loads = loads.saturating_sub(1);
        if *loads == 0 {
            self.finish_rebuild_of(compact)?;
        }
        Ok(())
    }

    /// Opens an existing database for reading while its owner may be running
    /// (a consistent view as of the moment of opening).
    pub fn open_read_only(path: &Path, cfs: &'static [Cf]) -> Result<Db, StoreError> {
        let opts = Options::default();
        // The column families' own options: a row appended to reads back
        // merged.
        let cache = rocksdb::Cache::new_lru_cache(DB_BLOCK_CACHE_BYTES);
        let descriptors = cfs.iter().map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache)));
        let db = DB::open_cf_descriptors_read_only(&opts, path, descriptors, false)?;
        Ok(Db {
            db,
            cfs,
            wal: true,
            ingests: Default::default(),
            rows_written: Default::default(),
            bytes_written: Default::default(),
            rows_by_cf: Default::default(),
            discard: Default::default(),
            bulk_loads: Default::default(),
        })
    }

    /// Deletes every row of `cf`.
    pub fn clear(&self, cf: Cf) -> Result<(), StoreError> {
        let first = self.db.iterator_cf(self.cf(cf), IteratorMode::Start).next().transpose()?;
        let last = self.db.iterator_cf(self.cf(cf), IteratorMode::End).next().transpose()?;
        if let (Some((first, _)), Some((last, _))) = (first, last) {
            let mut end = last.to_vec();
            end.push(0);
            self.db.delete_range_cf(self.cf(cf), &first[..], &end[..])?;
        }
        Ok(())
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        assert!(self.cfs.contains(&cf), "column family {} is not in this database", cf.name());
        self.db.cf_handle(cf.name()).expect("column family opened")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// The rows of `keys` in one column family, in their order: one lookup
    /// of many keys, which shares the search of the memtables' and table
    /// files' filters and blocks among them.
    pub fn multi_get(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.db.batched_multi_get_cf(self.cf(cf), keys, false).into_iter().map(|r| Ok(r?.map(|v| v.to_vec()))).collect()
    }

    pub fn write(&self, batch: Batch) -> Result<(), StoreError> {
        // RocksDB's own encoding: per row a tag, a column family id and two
        // length prefixes besides the bytes.
        let bytes: usize = batch.ops.iter().map(|(_, k, v)| k.len() + v.len()).sum();
        self.rows_written.fetch_add(batch.ops.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (cf, _, _) in &batch.ops {
            self.rows_by_cf[*cf as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.bytes_written.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        if self.discard.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        // In key order within each column family: a memtable's skiplist
        // finds the place of a key next to the last one it inserted from
        // there, instead of from the top (the writers' dearest step was that
        // search, a cache miss per level). Stable, so rows of one key keep
        // their order.
        let mut ops = batch.ops;
        ops.sort_by(|(a, ka, _), (b, kb, _)| (*a as u8).cmp(&(*b as u8)).then_with(|| ka.cmp(kb)));
        let mut wb = WriteBatch::with_capacity_bytes(bytes + 16 * ops.len() + 12);
        for (cf, k, v) in &ops {
            match v {
                Op::Put(v) => wb.put_cf(self.cf(*cf), k, v),
                Op::Delete => wb.delete_cf(self.cf(*cf), k),
                Op::Append(v) => wb.merge_cf(self.cf(*cf), k, v),
            }
        }
        if self.wal {
            return Ok(self.db.write(wb)?);
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        Ok(self.db.write_opt(wb, &opts)?)
    }

    /// Drops every later write (counting it): the bench's bound of what the
    /// service does with no database written at all. Never in service: the
    /// state read back is then wrong.
    pub fn discard_writes(&self) {
        self.discard.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Up to `limit` entries with keys starting with `prefix`, from `start`
    /// (inclusive; at least `prefix`) on.
    pub fn scan(&self, cf: Cf, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<Row>, StoreError> {
        let from = if start < prefix { prefix } else { start };
        let mut out = Vec::new();
        // Bounded by the first key past the prefix: the iterator stops there
        // instead of positioning on (and reading a block for) the next row.
        let mut read = rocksdb::ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            read.set_iterate_upper_bound(end);
        }
        for item in self.db.iterator_cf_opt(self.cf(cf), read, IteratorMode::From(from, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// A consistent read view of the whole database as of now.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { db: self, snap: self.db.snapshot() }
    }

    /// The greatest row whose key is at most `at` and starts with `prefix`.
    pub fn seek_prev(&self, cf: Cf, prefix: &[u8], at: &[u8]) -> Result<Option<Row>, StoreError> {
        let mut it = self.db.iterator_cf(self.cf(cf), IteratorMode::From(at, Direction::Reverse));
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(k.starts_with(prefix).then(|| (k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// A digest of every key and value, column family by column family in
    /// key order: equal digests mean byte-identical contents. Returns each
    /// column family's name, digest (hex) and number of rows. The column
    /// families are read in parallel, with read-ahead and without filling
    /// the block cache (a live database's hot blocks stay).
    pub fn digest(&self) -> Result<Vec<(&'static str, String, u64)>, StoreError> {
        // The outbox is delivery state, not derived from the log alone.
        let derived: Vec<Cf> = self.cfs.iter().copied().filter(|cf| *cf != Cf::Outbox).collect();
        self.digest_of(&derived)
    }

    /// [`Db::digest`] of some of the column families.
    pub fn digest_of(&self, cfs: &[Cf]) -> Result<Vec<(&'static str, String, u64)>, StoreError> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = cfs.iter().map(|cf| scope.spawn(move || self.digest_cf(*cf))).collect();
            handles.into_iter().map(|h| h.join().expect("digest thread panicked")).collect()
        })
    }

    fn digest_cf(&self, cf: Cf) -> Result<(&'static str, String, u64), StoreError> {
        let mut read = rocksdb::ReadOptions::default();
        read.fill_cache(false);
        read.set_readahead_size(4 << 20);
        let mut h = Sha256::new();
        let mut n = 0u64;
        for item in self.db.iterator_cf_opt(self.cf(cf), read, IteratorMode::Start) {
            let (k, v) = item?;
            h.update((k.len() as u64).to_le_bytes());
            h.update(&k);
            h.update((v.len() as u64).to_le_bytes());
            h.update(&v);
            n += 1;
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((cf.name(), hex, n))
    }

    /// Every row of one column family in key order, lazily.
    pub fn rows(&self, cf: Cf) -> impl Iterator<Item = Result<Row, StoreError>> + '_ {
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::Start)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
    }

    /// (rows, key and value bytes) written through [`Db::write`] since opening.
    /// Rows written through [`Db::write`] since opening, per column family
    /// of this database.
    pub fn written_by_cf(&self) -> Vec<(&'static str, u64)> {
        self.cfs
            .iter()
            .map(|cf| (cf.name(), self.rows_by_cf[*cf as usize].load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }

    pub fn written(&self) -> (u64, u64) {
        let r = std::sync::atomic::Ordering::Relaxed;
        (self.rows_written.load(r), self.bytes_written.load(r))
    }

    pub fn column_families(&self) -> &'static [Cf] {
        self.cfs
    }

    /// What RocksDB says of its compactions and write stalls now (for the
    /// metrics; a property it does not know reads as 0).
    pub fn condition(&self) -> Condition {
        let int = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        let pending = self
            .cfs
            .iter()
            .map(|cf| {
                self.db
                    .property_int_value_cf(self.cf(*cf), "rocksdb.estimate-pending-compaction-bytes")
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum();
        let stalls = self
            .db
            .property_value("rocksdb.db-write-stall-stats")
            .ok()
            .flatten()
            .map(|text| parse_stall_stats(&text))
            .unwrap_or_default();
        Condition {
            running_compactions: int("rocksdb.num-running-compactions"),
            pending_compaction_bytes: pending,
            write_stopped: int("rocksdb.is-write-stopped") != 0,
            delayed_write_rate: int("rocksdb.actual-delayed-write-rate"),
            stalls,
        }
    }

    /// Every key and value of one column family, for tests.
    pub fn all(&self, cf: Cf) -> Result<Vec<Row>, StoreError> {
        self.scan(cf, &[], &[], usize::MAX)
    }

    /// Writes `rows` (unique keys, any order; a `None` value deletes) of one
    /// column family as a sorted table file and ingests it, bypassing the
    /// memtable: for a fresh rebuild, where inserting row by row into the
    /// memtable's skiplist is most of the cost. Later ingests win over
    /// earlier ones (in a column family that [appends](Cf::appends), add
    /// to them). Empties `rows`.
    pub fn ingest(&self, cf: Cf, rows: &mut Vec<TableRow>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let n = self.ingests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.db.path().join(format!("ingest-{}-{n}.sst", cf.name()));
        // The same table format as the column family's own files, but not
        // compressed: a rebuild merges every ingested file once at the end
        // ([`Db::finish_rebuild`]), which compresses what it writes.
        let mut opts = cf_options(cf, &rocksdb::Cache::new_lru_cache(1 << 20));
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        let mut writer = rocksdb::SstFileWriter::create(&opts);
        writer.open(&path)?;
        for (k, v) in rows.drain(..) {
            match v {
                Some(v) if cf.appends() => writer.merge(k, v)?,
                Some(v) => writer.put(k, v)?,
                None => writer.delete(k)?,
            }
        }
        writer.finish()?;
        let mut ingest = rocksdb::IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        self.db.ingest_external_file_cf_opts(self.cf(cf), &ingest, vec![&path])?;
        Ok(())
    }

    /// Flushes memtables to disk (on clean shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        for cf in self.cfs {
            self.db.flush_cf(self.cf(*cf))?;
        }
        Ok(())
    }
}

/// Reads that all see the database as of one instant (other writers go on).
pub struct Snapshot<'a> {
    db: &'a Db,
    snap: rocksdb::Snapshot<'a>,
}

impl Snapshot<'_> {
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snap.get_cf(self.db.cf(cf), key)?)
    }

    /// Every row of one column family in key order, lazily.
    pub fn rows(&self, cf: Cf) -> impl Iterator<Item = Result<Row, StoreError>> + '_ {
        self.snap
            .iterator_cf(self.db.cf(cf), IteratorMode::Start)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
    }

    /// The rows of `cf` with keys in `[from, to)`, in key order.
    pub fn range(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Vec<Row>, StoreError> {
        let mut read = rocksdb::ReadOptions::default();
        read.set_iterate_upper_bound(to.to_vec());
        let mut out = Vec::new();
        for item in self.snap.iterator_cf_opt(self.db.cf(cf), read, IteratorMode::From(from, Direction::Forward)) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The next offset the views of `partition` fold, as of this snapshot.
    pub fn position(&self, partition: u32) -> Result<u64, StoreError> {
        Ok(match self.get(Cf::Meta, &position_key(partition))? {
            Some(v) => read_u64(&v, "a position")?,
            None => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccountKey;

    #[test]
    fn keys_round_trip_and_sort() {
        let k = AccountKey::new("t", "p", "m:1");
        let b = account_key(&k);
        assert_eq!(parse_account_key(&b), Some((k, &[][..])));
        assert!(millis_key(-5) < millis_key(3));
        assert_eq!(millis_from_key(&millis_key(-123)), Some(-123));
        assert_eq!(millis_from_key(&[1, 2, 3]), None);
    }

    #[test]
    fn rows_of_one_key_keep_their_order_in_a_batch_written_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), VIEW_CFS).unwrap();
        let mut batch = Batch::default();
        batch.put(Cf::Due, b"k", b"1");
        batch.put(Cf::Accounts, b"z", b"z");
        batch.delete_vec(Cf::Due, b"k".to_vec());
        batch.put(Cf::Accounts, b"a", b"a");
        batch.put(Cf::Due, b"k", b"2");
        batch.put(Cf::Due, b"gone", b"1");
        batch.delete_vec(Cf::Due, b"gone".to_vec());
        batch.view_row(Cf::Entries, b"page".to_vec(), Some(b"one,".to_vec()));
        batch.put(Cf::Due, b"a", b"3");
        batch.view_row(Cf::Entries, b"page".to_vec(), Some(b"two".to_vec()));
        db.write(batch).unwrap();
        assert_eq!(db.get(Cf::Due, b"k").unwrap().as_deref(), Some(&b"2"[..]), "the last put wins");
        assert_eq!(db.get(Cf::Due, b"gone").unwrap(), None, "a delete after a put deletes");
        assert_eq!(db.get(Cf::Entries, b"page").unwrap().as_deref(), Some(&b"one,two"[..]), "appends in order");
        assert_eq!(
            db.multi_get(Cf::Accounts, &[b"z".to_vec(), b"b".to_vec(), b"a".to_vec()]).unwrap(),
            [Some(b"z".to_vec()), None, Some(b"a".to_vec())]
        );
    }

    #[test]
    fn a_scan_stays_within_its_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), VIEW_CFS).unwrap();
        let mut batch = Batch::default();
        for k in [&b"a"[..], b"a\xff", b"a\xff\x00", b"b", b"\xff", b"\xff\xff"] {
            batch.put(Cf::Entries, k, k);
        }
        db.write(batch).unwrap();
        let keys = |prefix: &[u8], start: &[u8]| -> Vec<Vec<u8>> {
            db.scan(Cf::Entries, prefix, start, usize::MAX).unwrap().into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(keys(b"a", b""), [&b"a"[..], b"a\xff", b"a\xff\x00"]);
        assert_eq!(keys(b"a\xff", b"a\xff\x00"), [b"a\xff\x00"]);
        assert_eq!(keys(b"\xff", b""), [&b"\xff"[..], b"\xff\xff"]);
        assert_eq!(keys(b"", b"b").len(), 3);
    }
}

#[cfg(test)]
mod condition_tests {
    use super::*;

    #[test]
    fn a_fresh_database_reports_no_stall_and_no_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), VIEW_CFS).unwrap();
        let c = db.condition();
        assert!(!c.write_stopped);
        assert_eq!((c.running_compactions, c.delayed_write_rate), (0, 0));
        assert!(c.stalls.is_empty(), "{:?}", c.stalls);
    }

    #[test]
    fn stall_counts_are_read_from_rocksdbs_text() {
        let text = "Write Stall (count): write-buffer-manager-limit-stops: 3, memtable-limit-delays: 0\n";
        assert_eq!(parse_stall_stats(text), [("write-buffer-manager-limit-stops".to_string(), 3)]);
    }
}
