//! The webhook's durable queue: one file per record in `spool_dir`, so records survive
//! a receiver outage and a daemon restart.
//!
//! Names are `<20-digit sequence>-<call id>.json`: fixed-width numbers sort in
//! submission order as plain strings, and the call id lets a person (and the drop log
//! line) tell records apart without opening them. A record is written to a dot-named
//! temp file, synced, then renamed, so the delivery loop never sees half a record.
//!
//! The directory listing is read once at startup; afterwards an in-memory index (behind
//! a mutex shared by the writer thread and the delivery task) is the queue, which keeps
//! "what is the oldest record" a lock away instead of a directory scan.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// The sub-directory for records the receiver refused (permanent 4xx).
pub const REJECTED_DIR: &str = "rejected";
const SEQ_WIDTH: usize = 20;
const SUFFIX: &str = ".json";
const TMP_SUFFIX: &str = ".tmp";

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
}

impl Entry {
    /// The (file-name-safe) call id embedded in the name.
    pub fn call_id(&self) -> &str {
        call_id_of(&self.name)
    }
}

fn call_id_of(name: &str) -> &str {
    name.get(SEQ_WIDTH + 1..)
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .unwrap_or("")
}

/// Records evicted to keep the spool under its bound.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub entries: Vec<Entry>,
}

impl Evicted {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The call ids, for the log line (at most a few, then a count).
    pub fn call_ids(&self) -> String {
        const SHOWN: usize = 5;
        let mut ids: Vec<&str> = self
            .entries
            .iter()
            .take(SHOWN)
            .map(Entry::call_id)
            .collect();
        let more = self.entries.len().saturating_sub(SHOWN);
        let more_text = format!("and {more} more");
        if more > 0 {
            ids.push(&more_text);
        }
        ids.join(", ")
    }
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    bytes: u64,
}

impl Queue {
    fn push(&mut self, e: Entry) {
        self.bytes += e.size;
        self.entries.push_back(e);
    }

    fn remove(&mut self, name: &str) -> Option<Entry> {
        let i = self.entries.iter().position(|e| e.name == name)?;
        let e = self.entries.remove(i)?;
        self.bytes -= e.size;
        Some(e)
    }

    /// Pops the oldest entries until the total fits in `max`.
    fn evict_to(&mut self, max: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        while self.bytes > max {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= e.size;
            out.push(e);
        }
        out
    }
}

struct State {
    next_seq: u64,
    queue: Queue,
    rejected: Queue,
}

pub struct Spool {
    dir: PathBuf,
    rejected_dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Signalled when a record is added (the delivery loop waits on it when idle).
    pub added: Notify,
    /// Told the number of waiting records after every change, under the lock, so
    /// reports from the writer and the delivery loop cannot overtake each other.
    observer: Option<Box<dyn Fn(usize) + Send + Sync>>,
}

impl Spool {
    /// Opens (creating it if needed) the spool, removes temp files a crash left behind
    /// and indexes the records of previous runs. Returns the records evicted because
    /// the spool is above `max_bytes` (the bound may have been lowered).
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Spool, Evicted)> {
        let rejected_dir = dir.join(REJECTED_DIR);
        fs::create_dir_all(&rejected_dir)?;
        // Fail now, with the path in the error, rather than on the first record.
        probe_writable(dir)?;
        let mut queue = scan(dir)?;
        let mut rejected = scan(&rejected_dir)?;
        let max_seq = queue
            .entries
            .iter()
            .chain(rejected.entries.iter())
            .filter_map(|e| e.name.get(..SEQ_WIDTH)?.parse::<u64>().ok())
            .max();
        let evicted = queue.evict_to(max_bytes);
        remove_all(dir, &evicted);
        let old_rejected = rejected.evict_to(rejected_max(max_bytes));
        remove_all(&rejected_dir, &old_rejected);
        let spool = Spool {
            dir: dir.to_path_buf(),
            rejected_dir,
            max_bytes,
            state: Mutex::new(State {
                next_seq: max_seq.map_or(1, |s| s.saturating_add(1)),
                queue,
                rejected,
            }),
            added: Notify::new(),
            observer: None,
        };
        Ok((spool, Evicted { entries: evicted }))
    }

    /// Reports the queue length now and after every change.
    pub fn observe(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Spool {
        f(self.lock().queue.entries.len());
        self.observer = Some(Box::new(f));
        self
    }

    fn changed(&self, st: &State) {
        if let Some(f) = &self.observer {
            f(st.queue.entries.len());
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent index (every mutation is
        // a single push/remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn rejected_dir(&self) -> &Path {
        &self.rejected_dir
    }

    pub fn path_of(&self, e: &Entry) -> PathBuf {
        self.dir.join(&e.name)
    }

    /// Makes a record durable: temp file, fsync, rename, fsync of the directory. Then
    /// evicts the oldest records if the spool went over its bound; a record larger than
    /// the whole bound evicts only itself.
    pub fn put(&self, body: &[u8], call_id: &str) -> io::Result<(Entry, Evicted)> {
        let seq = {
            let mut st = self.lock();
            let s = st.next_seq;
            st.next_seq = s.saturating_add(1);
            s
        };
        let name = format!("{seq:0SEQ_WIDTH$}-{}{SUFFIX}", file_safe(call_id));
        let tmp = self.dir.join(format!(".{name}{TMP_SUFFIX}"));
        let size = body.len() as u64;
        if size > self.max_bytes {
            let e = Entry { name, size };
            return Ok((e.clone(), Evicted { entries: vec![e] }));
        }
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(body)?;
            f.sync_data()?;
            fs::rename(&tmp, self.dir.join(&name))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.dir);
        let entry = Entry { name, size };
        let evicted = {
            let mut st = self.lock();
            st.queue.push(entry.clone());
            let evicted = st.queue.evict_to(self.max_bytes);
            self.changed(&st);
            evicted
        };
        remove_all(&self.dir, &evicted);
        self.added.notify_one();
        Ok((entry, Evicted { entries: evicted }))
    }

    /// The oldest record, if any.
    pub fn front(&self) -> Option<Entry> {
        self.lock().queue.entries.front().cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().queue.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.lock().queue.bytes
    }

    /// Delivered (or vanished): out of the index and off the disk.
    pub fn remove(&self, e: &Entry) -> io::Result<()> {
        self.forget(e);
        match fs::remove_file(self.path_of(e)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    fn forget(&self, e: &Entry) {
        let mut st = self.lock();
        if st.queue.remove(&e.name).is_some() {
            self.changed(&st);
        }
    }

    /// Refused by the receiver: moved to `rejected/` (bounded to a quarter of the spool
    /// bound, oldest out first) so it no longer blocks the queue but can be inspected.
    pub fn reject(&self, e: &Entry) -> io::Result<()> {
        self.forget(e);
        fs::rename(self.path_of(e), self.rejected_dir.join(&e.name))?;
        let old = {
            let mut st = self.lock();
            st.rejected.push(e.clone());
            st.rejected.evict_to(rejected_max(self.max_bytes))
        };
        remove_all(&self.rejected_dir, &old);
        Ok(())
    }

    /// The names in `rejected/`, oldest first.
    #[cfg(test)]
    pub fn rejected(&self) -> Vec<Entry> {
        self.lock().rejected.entries.iter().cloned().collect()
    }
}

fn rejected_max(max_bytes: u64) -> u64 {
    max_bytes / 4
}

fn is_record_name(name: &str) -> bool {
    name.len() > SEQ_WIDTH + 1 + SUFFIX.len()
        && name.as_bytes()[..SEQ_WIDTH].iter().all(u8::is_ascii_digit)
        && name.as_bytes()[SEQ_WIDTH] == b'-'
        && name.ends_with(SUFFIX)
}

/// The records in `dir`, oldest first; removes leftover temp files.
fn scan(dir: &Path) -> io::Result<Queue> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') && name.ends_with(TMP_SUFFIX) {
            // Written by a run that crashed before the rename: never acknowledged as
            // spooled, and possibly incomplete.
            let _ = fs::remove_file(item.path());
            continue;
        }
        if !is_record_name(&name) {
            continue;
        }
        let meta = item.metadata()?;
        if meta.is_file() {
            found.push(Entry {
                name,
                size: meta.len(),
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let mut q = Queue::default();
    for e in found {
        q.push(e);
    }
    Ok(q)
}

fn remove_all(dir: &Path, entries: &[Entry]) {
    for e in entries {
        // Already gone (delivered concurrently) is fine; anything else would only
        // leave a file the next startup scan indexes again.
        let _ = fs::remove_file(dir.join(&e.name));
    }
}

fn probe_writable(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".probe-{}{TMP_SUFFIX}", std::process::id()));
    fs::File::create(&probe)?.write_all(b"probe")?;
    fs::remove_file(&probe)
}

/// Makes the rename itself durable (the directory entry), where the OS supports it.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// A call id reduced to characters safe in a file name on any system.
pub fn file_safe(call_id: &str) -> String {
    let s: String = call_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "unknown".to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &Spool) -> Vec<String> {
        s.lock()
            .queue
            .entries
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    fn on_disk(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != REJECTED_DIR)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn records_sort_in_submission_order_and_keep_it_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (s, ev) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(ev.is_empty());
        // More than 9 and more than 99 so a non-padded number would sort wrongly.
        for i in 0..120 {
            s.put(format!("{{\"n\":{i}}}").as_bytes(), &format!("call-{i}"))
                .unwrap();
        }
        let listed = on_disk(dir.path());
        assert_eq!(listed, names(&s), "index and directory agree");
        let bodies: Vec<String> = listed
            .iter()
            .map(|n| fs::read_to_string(dir.path().join(n)).unwrap())
            .collect();
        let expected: Vec<String> = (0..120).map(|i| format!("{{\"n\":{i}}}")).collect();
        assert_eq!(bodies, expected);
        assert_eq!(s.front().unwrap().call_id(), "call-0");
        // Deliver the first few, then "restart": the rest come back in order and new
        // records go after them.
        for _ in 0..3 {
            s.remove(&s.front().unwrap()).unwrap();
        }
        drop(s);
        let (s2, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s2.len(), 117);
        assert_eq!(s2.front().unwrap().call_id(), "call-3");
        let (e, _) = s2.put(b"{\"n\":120}", "call-120").unwrap();
        assert_eq!(names(&s2).last(), Some(&e.name));
        assert!(names(&s2).windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn spool_is_bounded_by_dropping_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        // 10-byte records, room for 3.
        let (s, _) = Spool::open(dir.path(), 35).unwrap();
        let mut evicted = Vec::new();
        for i in 0..5 {
            let (_, ev) = s
                .put(format!("record-{i:03}").as_bytes(), &format!("c{i}"))
                .unwrap();
            evicted.extend(ev.entries.iter().map(|e| e.call_id().to_owned()));
        }
        assert_eq!(evicted, ["c0", "c1"]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.bytes(), 30);
        assert_eq!(on_disk(dir.path()).len(), 3, "evicted files are deleted");
        assert_eq!(s.front().unwrap().call_id(), "c2");
        // A record larger than the whole bound cannot be kept, and evicts nothing else.
        let (big, ev) = s.put(&[b'x'; 36], "huge").unwrap();
        assert_eq!(ev.entries, vec![big]);
        assert_eq!(s.len(), 3);
        // A lower bound at the next start trims the oldest.
        drop(s);
        let (s2, ev) = Spool::open(dir.path(), 20).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev.call_ids(), "c2");
        assert_eq!(s2.len(), 2);
        assert_eq!(on_disk(dir.path()).len(), 2);
    }

    #[test]
    fn rejected_records_leave_the_queue_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        // Rejected keeps a quarter: 25 bytes, two 10-byte records.
        let (s, _) = Spool::open(dir.path(), 100).unwrap();
        for i in 0..4 {
            s.put(format!("record-{i:03}").as_bytes(), &format!("c{i}"))
                .unwrap();
        }
        for _ in 0..3 {
            s.reject(&s.front().unwrap()).unwrap();
        }
        assert_eq!(s.front().unwrap().call_id(), "c3");
        let kept: Vec<String> = s
            .rejected()
            .iter()
            .map(|e| e.call_id().to_owned())
            .collect();
        assert_eq!(kept, ["c1", "c2"]);
        assert_eq!(on_disk(&dir.path().join(REJECTED_DIR)).len(), 2);
        // Sequence numbers continue after rejected ones even when the queue is empty.
        s.remove(&s.front().unwrap()).unwrap();
        drop(s);
        let (s2, _) = Spool::open(dir.path(), 100).unwrap();
        let (e, _) = s2.put(b"x", "c9").unwrap();
        assert!(s2.rejected().iter().all(|r| r.name < e.name));
    }

    #[test]
    fn leftover_temp_files_are_removed_and_foreign_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(".00000000000000000007-c.json.tmp"),
            "{\"half",
        )
        .unwrap();
        fs::write(dir.path().join("README"), "not a record").unwrap();
        let (s, _) = Spool::open(dir.path(), 1000).unwrap();
        assert!(s.is_empty());
        assert_eq!(on_disk(dir.path()), ["README"]);
    }

    #[test]
    fn call_ids_become_safe_file_names() {
        assert_eq!(file_safe("a1b2-c3_d.e"), "a1b2-c3_d.e");
        assert_eq!(file_safe("../etc/passwd"), ".._etc_passwd");
        assert_eq!(file_safe(""), "unknown");
        assert_eq!(file_safe(&"x".repeat(100)).len(), 64);
        let e = Entry {
            name: format!("{:020}-{}.json", 5, "abc"),
            size: 1,
        };
        assert_eq!(e.call_id(), "abc");
        assert!(is_record_name(&e.name));
        assert!(!is_record_name("00000000000000000005.json"));
    }
}
