//! The embedded log: each partition is a directory of segment files named by
//! their first offset. A record is framed as `[len u32 LE][crc32c u32 LE][payload]`.
//!
//! - Appends from one writer go out as one `write` and one `fdatasync`; the
//!   partition's end moves only after that, so readers see durable records only.
//! - The active segment is written ahead with zeros ([`ZERO_AHEAD_BYTES`] at a
//!   time, in the same write as the append that crosses into the next
//!   stretch), so most appends overwrite bytes the file already has: their
//!   `fdatasync` then writes the data alone, not the file's new size as well
//!   (a journal commit on ext4). A zero length ends a segment's records (no
//!   record is empty); a segment is cut to its records when the next one starts.
//! - On open, every segment is checked; a torn tail of the last segment (a
//!   crash mid-append, never acknowledged) is cut off; zeros written ahead are
//!   kept. A bad record anywhere else is corruption and refuses to open.
//! - A sparse index (one entry every `INDEX_INTERVAL_RECORDS`) lets a reader
//!   start anywhere without scanning from zero.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Take};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{EventLog, LogEntry, LogError, LogReader, LogRecord};

pub const SEGMENT_BYTES_MAX: u64 = 256 << 20;
pub const RECORD_BYTES_MAX: usize = 16 << 20;
const INDEX_INTERVAL_RECORDS: u64 = 256;
const HEADER_BYTES: usize = 8;
/// The active segment is zeroed ahead to the next multiple of this past the
/// last append (see the module doc).
pub const ZERO_AHEAD_BYTES: u64 = 1 << 20;

pub struct EmbeddedLog {
    partitions: Vec<Arc<Partition>>,
    /// Opened beside a running writer: appends are refused.
    read_only: bool,
    /// Where appends time their fsyncs (the service's metrics), once set.
    fsyncs: std::sync::OnceLock<crate::metrics::Histogram>,
}

struct Partition {
    dir: PathBuf,
    /// A segment this long or longer is closed before the next append.
    segment_bytes_max: u64,
    /// The append side: one writer at a time.
    append: Mutex<Appender>,
    /// Segments and the durable end, shared with readers.
    shared: Mutex<Shared>,
    grown: Condvar,
}

struct Appender {
    file: File,
    /// Bytes of records in the active segment.
    segment_bytes: u64,
    /// The active segment file's length: its records, then zeros.
    file_bytes: u64,
    /// A failed append could not be undone: appending more could bring its
    /// records back, so every later append is refused.
    poisoned: bool,
}

#[derive(Clone)]
struct Segment {
    base: u64,
    path: PathBuf,
    /// (offset, byte position) every INDEX_INTERVAL_RECORDS records.
    index: Vec<(u64, u64)>,
}

struct Shared {
    segments: Vec<Segment>,
    /// Offset of the next record; everything below is durable.
    end: u64,
    /// Bytes of durable records in the last segment: readers of it read no
    /// further (past them are zeros an append will overwrite).
    last_bytes: u64,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl EmbeddedLog {
    /// Opens (or creates) a log of `partitions` partitions under `dir`. The
    /// count is fixed at creation; opening with another count is an error.
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, LogError> {
        EmbeddedLog::open_mode(dir, partitions, false, SEGMENT_BYTES_MAX)
    }

    /// Opens an existing log for reading beside a running writer: creates
    /// nothing and never cuts a tail (an append in flight is not torn); its
    /// end is the last whole record. Appending is refused.
    pub fn open_read_only(dir: &Path) -> Result<Self, LogError> {
        let partitions = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('p'))
            .count() as u32;
        if partitions == 0 {
            return Err(LogError::Corrupt(format!("{} holds no log", dir.display())));
        }
        EmbeddedLog::open_mode(dir, partitions, true, SEGMENT_BYTES_MAX)
    }

    fn open_mode(dir: &Path, partitions: u32, read_only: bool, segment_bytes_max: u64) -> Result<Self, LogError> {
        if !read_only {
            fs::create_dir_all(dir)?;
        }
        let existing = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('p'))
            .count();
        if existing != 0 && existing != partitions as usize {
            return Err(LogError::Corrupt(format!(
                "{} holds {existing} partitions but {partitions} were asked for; the count is fixed when the log is created",
                dir.display()
            )));
        }
        let partitions = (0..partitions)
            .map(|p| Partition::open(&dir.join(format!("p{p:05}")), read_only, segment_bytes_max).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(EmbeddedLog { partitions, read_only, fsyncs: std::sync::OnceLock::new() })
    }

    /// Syncs an append's data, timed into the metrics when they are set.
    fn sync(&self, file: &File) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let synced = file.sync_data();
        if let Some(h) = self.fsyncs.get() {
            h.duration(started.elapsed());
        }
        synced
    }

    fn partition(&self, p: u32) -> Result<&Arc<Partition>, LogError> {
        self.partitions.get(p as usize).ok_or(LogError::NoPartition(p))
    }
}

impl Partition {
    fn open(dir: &Path, read_only: bool, segment_bytes_max: u64) -> Result<Partition, LogError> {
        if !read_only {
            fs::create_dir_all(dir)?;
        }
        let mut bases: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        bases.sort_unstable();
        if bases.is_empty() && !read_only {
            File::create(segment_path(dir, 0))?.sync_all()?;
            sync_dir(dir)?;
            bases.push(0);
        }
        if bases.is_empty() {
            return Err(LogError::Corrupt(format!("{} holds no segment", dir.display())));
        }
        let mut segments = Vec::new();
        let (mut end, mut last_bytes, mut file_bytes) = (0, 0, 0);
        let last = bases.len() - 1;
        for (i, base) in bases.iter().copied().enumerate() {
            if base != end {
                return Err(LogError::Corrupt(format!("{}: segment {base} follows end {end}", dir.display())));
            }
            let path = segment_path(dir, base);
            let Scanned { index, next, good_bytes, file_bytes: len } = scan_segment(&path, base)?;
            file_bytes = len;
            if good_bytes != len && !read_only {
                if i != last {
                    return Err(LogError::Corrupt(format!("{}: bad record at byte {good_bytes}", path.display())));
                }
                if !zeros_from(&path, good_bytes)? {
                    // A torn tail: the append that wrote it was never acknowledged.
                    tracing::warn!(path = %path.display(), good_bytes, file_bytes = len, "cutting a torn tail off the log");
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(good_bytes)?;
                    f.sync_all()?;
                    file_bytes = good_bytes;
                }
            }
            segments.push(Segment { base, path, index });
            (end, last_bytes) = (next, good_bytes);
        }
        let active = segments.last().expect("one segment at least").path.clone();
        let file = if read_only { File::open(&active)? } else { OpenOptions::new().write(true).open(&active)? };
        Ok(Partition {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            append: Mutex::new(Appender { file, segment_bytes: last_bytes, file_bytes, poisoned: false }),
            shared: Mutex::new(Shared { segments, end, last_bytes }),
            grown: Condvar::new(),
        })
    }
}

/// Whether the file at `path` holds only zeros from byte `from` on.
fn zeros_from(path: &Path, from: u64) -> Result<bool, LogError> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What scanning a segment found.
struct Scanned {
    /// (offset, byte position) every INDEX_INTERVAL_RECORDS records.
    index: Vec<(u64, u64)>,
    /// The offset after the last valid record.
    next: u64,
    /// Bytes of valid records from the start.
    good_bytes: u64,
    file_bytes: u64,
}

/// Reads a segment's valid records.
fn scan_segment(path: &Path, base: u64) -> Result<Scanned, LogError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    let mut offset = base;
    let mut index = Vec::new();
    loop {
        match read_record(&mut r)? {
            Some(payload) => {
                if (offset - base).is_multiple_of(INDEX_INTERVAL_RECORDS) {
                    index.push((offset, pos));
                }
                pos += (HEADER_BYTES + payload.len()) as u64;
                offset += 1;
            }
            None => return Ok(Scanned { index, next: offset, good_bytes: pos, file_bytes: len }),
        }
    }
}

/// One record, or `None` at a clean end (the file's, or zeros written ahead)
/// or a torn/corrupt record.
fn read_record(r: &mut impl Read) -> Result<Option<Vec<u8>>, LogError> {
    let mut header = [0u8; HEADER_BYTES];
    if !read_full(r, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > RECORD_BYTES_MAX {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    if !read_full(r, &mut payload)? || crc32c::crc32c(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Fills `buf`, or returns false if the input ends first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, LogError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

impl EventLog for EmbeddedLog {
    fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn shared(&self) -> bool {
        false
    }

    fn append(&self, partition: u32, records: &[LogRecord]) -> Result<Vec<u64>, LogError> {
        if self.read_only {
            return Err(LogError::Unavailable("the log was opened read-only".into()));
        }
        let p = self.partition(partition)?;
        let mut app = p.append.lock().expect("log appender lock");
        if app.poisoned {
            return Err(LogError::Unavailable(format!(
                "{}: an earlier failed append could not be undone; restart to recover",
                p.dir.display()
            )));
        }
        let first = p.shared.lock().expect("log lock").end;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(rec) = records.iter().find(|r| r.payload.is_empty() || r.payload.len() > RECORD_BYTES_MAX) {
            return Err(LogError::RecordSize { bytes: rec.payload.len(), max: RECORD_BYTES_MAX });
        }
        if app.segment_bytes >= p.segment_bytes_max {
            // Cut the zeros off the full segment before the next one exists:
            // only the last segment may end in zeros.
            app.file.set_len(app.segment_bytes)?;
            app.file.sync_data()?;
            let path = segment_path(&p.dir, first);
            let file = OpenOptions::new().create_new(true).write(true).open(&path)?;
            sync_dir(&p.dir)?;
            (app.file, app.segment_bytes, app.file_bytes) = (file, 0, 0);
            let mut shared = p.shared.lock().expect("log lock");
            shared.segments.push(Segment { base: first, path, index: Vec::new() });
            shared.last_bytes = 0;
        }
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.payload.len() + HEADER_BYTES).sum());
        let mut index = Vec::new();
        let (seg_base, mut pos) =
            (p.shared.lock().expect("log lock").segments.last().expect("segment").base, app.segment_bytes);
        for (i, rec) in records.iter().map(|r| &r.payload).enumerate() {
            let offset = first + i as u64;
            if (offset - seg_base).is_multiple_of(INDEX_INTERVAL_RECORDS) {
                index.push((offset, pos));
            }
            buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(rec).to_le_bytes());
            buf.extend_from_slice(rec);
            pos += (HEADER_BYTES + rec.len()) as u64;
        }
        let file_bytes = if pos > app.file_bytes {
            // Past the zeros: write the next stretch of them with the records.
            let zeroed = (pos / ZERO_AHEAD_BYTES + 1) * ZERO_AHEAD_BYTES;
            buf.resize(buf.len() + (zeroed - pos) as usize, 0);
            zeroed
        } else {
            app.file_bytes
        };
        let synced = app.file.write_all_at(&buf, app.segment_bytes).and_then(|()| self.sync(&app.file));
        if let Err(e) = synced {
            // Whatever part was written is a torn tail: cut it so the next
            // append starts clean (and a restart would cut it too). If that
            // fails as well, records of this append could come back later.
            match app.file.set_len(app.segment_bytes).and_then(|()| app.file.sync_data()) {
                Ok(()) => app.file_bytes = app.segment_bytes,
                Err(cut) => {
                    tracing::error!(dir = %p.dir.display(), error = %cut, "could not cut a failed append off the log");
                    app.poisoned = true;
                }
            }
            return Err(e.into());
        }
        (app.segment_bytes, app.file_bytes) = (pos, file_bytes);
        let mut shared = p.shared.lock().expect("log lock");
        shared.segments.last_mut().expect("segment").index.extend(index);
        shared.end = first + records.len() as u64;
        shared.last_bytes = pos;
        drop(shared);
        p.grown.notify_all();
        Ok((first..first + records.len() as u64).collect())
    }

    fn time_fsyncs(&self, seconds: crate::metrics::Histogram) {
        let _ = self.fsyncs.set(seconds);
    }

    fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        Ok(self.partition(partition)?.shared.lock().expect("log lock").end)
    }

    fn reader(&self, partition: u32, from: u64) -> Result<Box<dyn LogReader>, LogError> {
        let p = self.partition(partition)?.clone();
        Ok(Box::new(EmbeddedReader { partition: p, position: from, file: None }))
    }
}

pub struct EmbeddedReader {
    partition: Arc<Partition>,
    position: u64,
    /// The segment being read, at `position`.
    file: Option<OpenSegment>,
}

struct OpenSegment {
    base: u64,
    /// The next segment's base, if there was one when this one was opened.
    next_base: Option<u64>,
    r: BufReader<Take<File>>,
    /// The file's byte the reader may read up to: the durable records of the
    /// last segment (zeros follow, which later appends overwrite), or no limit.
    readable_to: u64,
}

impl OpenSegment {
    /// Lets the reader read up to byte `to` of the file.
    fn read_up_to(&mut self, to: u64) {
        let read = self.readable_to - self.r.get_ref().limit();
        self.r.get_mut().set_limit(to - read);
        self.readable_to = to;
    }
}

impl EmbeddedReader {
    /// Opens the segment holding `position` and seeks to it.
    fn open_at_position(&mut self) -> Result<(), LogError> {
        let (seg, next_base, readable_to) = {
            let shared = self.partition.shared.lock().expect("log lock");
            let i = shared.segments.partition_point(|s| s.base <= self.position).saturating_sub(1);
            let last = i + 1 == shared.segments.len();
            (
                shared.segments[i].clone(),
                shared.segments.get(i + 1).map(|s| s.base),
                if last { shared.last_bytes } else { u64::MAX },
            )
        };
        let (mut offset, byte) =
            seg.index.iter().rev().find(|(o, _)| *o <= self.position).copied().unwrap_or((seg.base, 0));
        let mut file = File::open(&seg.path)?;
        file.seek(SeekFrom::Start(byte))?;
        let mut r = BufReader::with_capacity(256 << 10, file.take(readable_to.saturating_sub(byte)));
        while offset < self.position {
            read_record(&mut r)?
                .ok_or_else(|| LogError::Corrupt(format!("{}: record {offset} unreadable", seg.path.display())))?;
            offset += 1;
        }
        self.file = Some(OpenSegment { base: seg.base, next_base, r, readable_to });
        Ok(())
    }
}

impl LogReader for EmbeddedReader {
    fn next_batch(&mut self, max_records: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        let deadline = Instant::now() + wait;
        let (end, last_base, last_bytes) = {
            let mut shared = self.partition.shared.lock().expect("log lock");
            while shared.end <= self.position {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                shared = self.partition.grown.wait_timeout(shared, deadline - now).expect("log lock").0;
            }
            (shared.end, shared.segments.last().expect("segment").base, shared.last_bytes)
        };
        if let Some(seg) = self.file.as_mut() {
            // The open segment grew, or is no longer the last one.
            seg.read_up_to(if seg.base == last_base { last_bytes } else { u64::MAX });
        }
        let mut out = Vec::new();
        while self.position < end && out.len() < max_records {
            if self.file.is_none() {
                self.open_at_position()?;
            }
            let seg = self.file.as_mut().expect("open segment");
            if seg.next_base == Some(self.position) {
                self.file = None;
                continue;
            }
            match read_record(&mut seg.r)? {
                Some(payload) => {
                    out.push(LogEntry { offset: self.position, payload });
                    self.position += 1;
                }
                None => {
                    // The active segment rolled over under us: move on.
                    let rolled = {
                        let shared = self.partition.shared.lock().expect("log lock");
                        shared.segments.iter().any(|s| s.base == self.position)
                    };
                    if !rolled {
                        return Err(LogError::Corrupt(format!("record {} unreadable", self.position)));
                    }
                    self.file = None;
                }
            }
        }
        Ok(out)
    }

    fn position(&self) -> u64 {
        self.position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(payloads: &[&[u8]]) -> Vec<LogRecord> {
        payloads.iter().map(|p| LogRecord::new(Vec::new(), p.to_vec())).collect()
    }

    #[test]
    fn appends_read_back_and_survive_reopen_with_torn_tail_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        assert_eq!(log.append(1, &recs(&[b"a", b"bb"])).unwrap(), vec![0, 1]);
        assert_eq!(log.append(1, &recs(&[b"ccc"])).unwrap(), vec![2]);
        let mut r = log.reader(1, 1).unwrap();
        let got = r.next_batch(10, Duration::ZERO).unwrap();
        assert_eq!(
            got.iter().map(|e| (e.offset, e.payload.clone())).collect::<Vec<_>>(),
            vec![(1, b"bb".to_vec()), (2, b"ccc".to_vec())]
        );
        assert!(r.next_batch(10, Duration::from_millis(1)).unwrap().is_empty());
        drop(log);
        // A crash mid-append leaves half a record behind, in the zeros
        // written ahead.
        let seg = dir.path().join("p00001").join(format!("{:020}.seg", 0));
        let records_bytes = (3 * HEADER_BYTES + 6) as u64;
        assert_eq!(fs::metadata(&seg).unwrap().len(), ZERO_AHEAD_BYTES, "zeroed ahead");
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[9, 0, 0, 0, 1, 2], records_bytes).unwrap();
        drop(f);
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        assert_eq!(log.end_offset(1).unwrap(), 3);
        assert_eq!(fs::metadata(&seg).unwrap().len(), records_bytes, "the torn tail is cut");
        assert_eq!(log.append(1, &recs(&[b"d"])).unwrap(), vec![3]);
        let all = log.reader(1, 0).unwrap().next_batch(10, Duration::ZERO).unwrap();
        assert_eq!(all.len(), 4);
        assert!(EmbeddedLog::open(dir.path(), 3).is_err(), "partition count is fixed");
        assert!(log.append(1, &recs(&[b"e", b""])).is_err(), "no record is empty");
        drop(log);
        // Zeros written ahead are not a torn tail: a reopen keeps them.
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), ZERO_AHEAD_BYTES);
        assert_eq!(log.append(1, &recs(&[b"e"])).unwrap(), vec![4]);
        assert_eq!(log.reader(1, 0).unwrap().next_batch(10, Duration::ZERO).unwrap().len(), 5);
    }

    #[test]
    fn segments_roll_over_cut_to_their_records_and_read_back_across() {
        let dir = tempfile::tempdir().unwrap();
        let max = 3000;
        let log = EmbeddedLog::open_mode(dir.path(), 1, false, max).unwrap();
        // A reader that follows the appends as they come: it must never
        // take the zeros past the durable records for records.
        let mut tail = log.reader(0, 0).unwrap();
        let mut followed = Vec::new();
        let payload = |n: u32| format!("record {n} ").repeat(1 + n as usize % 7).into_bytes();
        for n in 0..400u32 {
            let batch: Vec<LogRecord> =
                (0..1 + n % 3).map(|i| LogRecord::new(Vec::new(), payload(n * 3 + i))).collect();
            log.append(0, &batch).unwrap();
            followed.extend(tail.next_batch(100, Duration::ZERO).unwrap());
        }
        let end = log.end_offset(0).unwrap();
        assert_eq!(followed.len() as u64, end);
        let mut segs: Vec<_> = fs::read_dir(dir.path().join("p00000")).unwrap().map(|e| e.unwrap().path()).collect();
        segs.sort();
        assert!(segs.len() > 3, "{} segments", segs.len());
        for (i, seg) in segs.iter().enumerate() {
            let len = fs::metadata(seg).unwrap().len();
            let scanned = scan_segment(seg, 0).unwrap();
            if i + 1 < segs.len() {
                assert_eq!(len, scanned.good_bytes, "{} is cut to its records", seg.display());
                assert!(len >= max);
            } else {
                assert_eq!(len % ZERO_AHEAD_BYTES, 0, "the last segment is zeroed ahead");
            }
        }
        // Read from the start, from the middle and after a reopen: the same records.
        let all = crate::log::read_towards(log.reader(0, 0).unwrap().as_mut(), end, 10_000).unwrap();
        assert_eq!(all, followed);
        let mid = log.reader(0, end / 2).unwrap().next_batch(10_000, Duration::ZERO).unwrap();
        assert_eq!(mid[0], followed[(end / 2) as usize]);
        drop(log);
        let log = EmbeddedLog::open_mode(dir.path(), 1, false, max).unwrap();
        assert_eq!(log.end_offset(0).unwrap(), end);
        log.append(0, &recs(&[b"after"])).unwrap();
        let mut r = log.reader(0, 0).unwrap();
        let mut again = Vec::new();
        while again.len() as u64 <= end {
            again.extend(r.next_batch(10_000, Duration::ZERO).unwrap());
        }
        assert_eq!(&again[..end as usize], &followed[..]);
        assert_eq!(again[end as usize].payload, b"after");
    }

    #[test]
    fn readers_start_anywhere_and_wait_for_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(EmbeddedLog::open(dir.path(), 1).unwrap());
        let many: Vec<LogRecord> = (0..1000u32).map(|i| LogRecord::new(Vec::new(), i.to_le_bytes().to_vec())).collect();
        log.append(0, &many).unwrap();
        let mut r = log.reader(0, 700).unwrap();
        let got = r.next_batch(5, Duration::ZERO).unwrap();
        assert_eq!(got[0].payload, 700u32.to_le_bytes().to_vec());
        let mut tail = log.reader(0, 1000).unwrap();
        let l2 = log.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            l2.append(0, &recs(&[b"late"])).unwrap();
        });
        let got = tail.next_batch(5, Duration::from_secs(5)).unwrap();
        h.join().unwrap();
        assert_eq!(got, vec![LogEntry { offset: 1000, payload: b"late".to_vec() }]);
    }
}
