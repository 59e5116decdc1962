//! The embedded log: each partition is a directory of segment files named by
//! their first offset. A record is framed as `[len u32 LE][crc32c u32 LE][payload]`.
//!
//! - Appends from one writer go out as one `write` and one `fdatasync`; the
//!   partition's end moves only after that, so readers see durable records only.
//! - On open, every segment is checked; a torn tail of the last segment (a
//!   crash mid-append, never acknowledged) is cut off. A bad record anywhere
//!   else is corruption and refuses to open.
//! - A sparse index (one entry every `INDEX_INTERVAL_RECORDS`) lets a reader
//!   start anywhere without scanning from zero.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{EventLog, LogEntry, LogError, LogReader, LogRecord};

pub const SEGMENT_BYTES_MAX: u64 = 256 << 20;
pub const RECORD_BYTES_MAX: usize = 16 << 20;
const INDEX_INTERVAL_RECORDS: u64 = 256;
const HEADER_BYTES: usize = 8;

pub struct EmbeddedLog {
    partitions: Vec<Arc<Partition>>,
    /// Opened beside a running writer: appends are refused.
    read_only: bool,
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
    /// Bytes in the active segment.
    segment_bytes: u64,
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
        Ok(EmbeddedLog { partitions, read_only })
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
        let mut end = 0;
        let last = bases.len() - 1;
        for (i, base) in bases.iter().copied().enumerate() {
            if base != end {
                return Err(LogError::Corrupt(format!("{}: segment {base} follows end {end}", dir.display())));
            }
            let path = segment_path(dir, base);
            let Scanned { index, next, good_bytes, file_bytes } = scan_segment(&path, base)?;
            if good_bytes != file_bytes && !read_only {
                if i != last {
                    return Err(LogError::Corrupt(format!("{}: bad record at byte {good_bytes}", path.display())));
                }
                // A torn tail: the append that wrote it was never acknowledged.
                tracing::warn!(path = %path.display(), good_bytes, file_bytes, "cutting a torn tail off the log");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good_bytes)?;
                f.sync_all()?;
            }
            segments.push(Segment { base, path, index });
            end = next;
        }
        let active = segments.last().expect("one segment at least").path.clone();
        let file = if read_only { File::open(&active)? } else { OpenOptions::new().append(true).open(&active)? };
        let segment_bytes = file.metadata()?.len();
        Ok(Partition {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            append: Mutex::new(Appender { file, segment_bytes }),
            shared: Mutex::new(Shared { segments, end }),
            grown: Condvar::new(),
        })
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

/// One record, or `None` at a clean end or a torn/corrupt record.
fn read_record(r: &mut impl Read) -> Result<Option<Vec<u8>>, LogError> {
    let mut header = [0u8; HEADER_BYTES];
    if !read_full(r, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > RECORD_BYTES_MAX {
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
        let first = p.shared.lock().expect("log lock").end;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if app.segment_bytes >= p.segment_bytes_max {
            let path = segment_path(&p.dir, first);
            let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
            sync_dir(&p.dir)?;
            app.file = file;
            app.segment_bytes = 0;
            p.shared.lock().expect("log lock").segments.push(Segment { base: first, path, index: Vec::new() });
        }
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.payload.len() + HEADER_BYTES).sum());
        let mut index = Vec::new();
        let (seg_base, mut pos) =
            (p.shared.lock().expect("log lock").segments.last().expect("segment").base, app.segment_bytes);
        for (i, rec) in records.iter().map(|r| &r.payload).enumerate() {
            if rec.len() > RECORD_BYTES_MAX {
                return Err(LogError::Corrupt(format!("record of {} bytes exceeds {RECORD_BYTES_MAX}", rec.len())));
            }
            let offset = first + i as u64;
            if (offset - seg_base).is_multiple_of(INDEX_INTERVAL_RECORDS) {
                index.push((offset, pos));
            }
            buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(rec).to_le_bytes());
            buf.extend_from_slice(rec);
            pos += (HEADER_BYTES + rec.len()) as u64;
        }
        if let Err(e) = app.file.write_all(&buf).and_then(|()| app.file.sync_data()) {
            // Whatever part was written is a torn tail: cut it so the next
            // append starts clean (and a restart would cut it too).
            let _ = app.file.set_len(app.segment_bytes);
            return Err(e.into());
        }
        app.segment_bytes = pos;
        let mut shared = p.shared.lock().expect("log lock");
        shared.segments.last_mut().expect("segment").index.extend(index);
        shared.end = first + records.len() as u64;
        drop(shared);
        p.grown.notify_all();
        Ok((first..first + records.len() as u64).collect())
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
    /// The open segment: (its base, the next segment's base if any, reader at `position`).
    file: Option<(u64, Option<u64>, BufReader<File>)>,
}

impl EmbeddedReader {
    /// Opens the segment holding `position` and seeks to it.
    fn open_at_position(&mut self) -> Result<(), LogError> {
        let (seg, next_base) = {
            let shared = self.partition.shared.lock().expect("log lock");
            let i = shared.segments.partition_point(|s| s.base <= self.position).saturating_sub(1);
            (shared.segments[i].clone(), shared.segments.get(i + 1).map(|s| s.base))
        };
        let (mut offset, byte) =
            seg.index.iter().rev().find(|(o, _)| *o <= self.position).copied().unwrap_or((seg.base, 0));
        let mut file = File::open(&seg.path)?;
        file.seek(SeekFrom::Start(byte))?;
        let mut r = BufReader::with_capacity(256 << 10, file);
        while offset < self.position {
            read_record(&mut r)?
                .ok_or_else(|| LogError::Corrupt(format!("{}: record {offset} unreadable", seg.path.display())))?;
            offset += 1;
        }
        self.file = Some((seg.base, next_base, r));
        Ok(())
    }
}

impl LogReader for EmbeddedReader {
    fn next_batch(&mut self, max_records: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        let deadline = Instant::now() + wait;
        let end = {
            let mut shared = self.partition.shared.lock().expect("log lock");
            while shared.end <= self.position {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                shared = self.partition.grown.wait_timeout(shared, deadline - now).expect("log lock").0;
            }
            shared.end
        };
        let mut out = Vec::new();
        while self.position < end && out.len() < max_records {
            if self.file.is_none() {
                self.open_at_position()?;
            }
            let (_, next_base, r) = self.file.as_mut().expect("open segment");
            if *next_base == Some(self.position) {
                self.file = None;
                continue;
            }
            match read_record(r)? {
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
        // A crash mid-append leaves half a record behind.
        let seg = dir.path().join("p00001").join(format!("{:020}.seg", 0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let log = EmbeddedLog::open(dir.path(), 2).unwrap();
        assert_eq!(log.end_offset(1).unwrap(), 3);
        assert_eq!(log.append(1, &recs(&[b"d"])).unwrap(), vec![3]);
        let all = log.reader(1, 0).unwrap().next_batch(10, Duration::ZERO).unwrap();
        assert_eq!(all.len(), 4);
        assert!(EmbeddedLog::open(dir.path(), 3).is_err(), "partition count is fixed");
    }

    #[test]
    fn segments_roll_over_and_read_back_across() {
        let dir = tempfile::tempdir().unwrap();
        let max = 3000;
        let log = EmbeddedLog::open_mode(dir.path(), 1, false, max).unwrap();
        // A reader that follows the appends as they come, across rollovers.
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
        assert!(followed.iter().enumerate().all(|(i, e)| e.offset == i as u64));
        let mut segs: Vec<_> = fs::read_dir(dir.path().join("p00000")).unwrap().map(|e| e.unwrap().path()).collect();
        segs.sort();
        assert!(segs.len() > 3, "{} segments", segs.len());
        for seg in &segs[..segs.len() - 1] {
            assert!(fs::metadata(seg).unwrap().len() >= max, "{} rolled over early", seg.display());
        }
        // From the start, from the middle and after a reopen: the same records.
        let all = crate::log::read_towards(log.reader(0, 0).unwrap().as_mut(), end, 10_000).unwrap();
        assert_eq!(all, followed);
        let mid = log.reader(0, end / 2).unwrap().next_batch(10_000, Duration::ZERO).unwrap();
        assert_eq!(mid[0], followed[(end / 2) as usize]);
        drop(log);
        let log = EmbeddedLog::open_mode(dir.path(), 1, false, max).unwrap();
        assert_eq!(log.end_offset(0).unwrap(), end);
        assert_eq!(log.append(0, &recs(&[b"after"])).unwrap(), vec![end]);
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
