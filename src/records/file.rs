//! The JSON Lines file: one line per record, rotated by size.
//!
//! Every append first compares the open handle with what the path names now, so a
//! logrotate that moved or deleted the file (or a person who did) is followed by a
//! fresh file at the configured path instead of writes into an unlinked inode. The size
//! is read from the path each time for the same reason (`copytruncate` shrinks the file
//! under us).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    open: Option<Open>,
}

struct Open {
    file: File,
    id: FileId,
}

#[cfg(unix)]
type FileId = (u64, u64);
#[cfg(not(unix))]
type FileId = ();

#[cfg(unix)]
fn id_of(m: &fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn id_of(_: &fs::Metadata) -> FileId {}

impl FileSink {
    /// Creates the parent directory and opens the file, so an unwritable path is an
    /// error at startup rather than a dropped record later.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<FileSink> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let mut sink = FileSink {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            open: None,
        };
        sink.reopen()?;
        Ok(sink)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of rotated file `n` (`records.jsonl.n`).
    pub fn rotated(&self, n: u32) -> PathBuf {
        let mut s = OsString::from(self.path.as_os_str());
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.open = None;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let id = id_of(&file.metadata()?);
        self.open = Some(Open { file, id });
        Ok(())
    }

    /// Appends `line` (one JSON value, no newline) plus a newline, rotating first if
    /// the file would grow past `max_bytes`. A record is never split: a record larger
    /// than the bound goes alone into a fresh file.
    pub fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let size = match fs::metadata(&self.path) {
            Ok(m) if self.open.as_ref().is_some_and(|o| o.id == id_of(&m)) => m.len(),
            Ok(_) | Err(_) => {
                // Moved, deleted or replaced since we opened it (or never opened).
                self.reopen()?;
                fs::metadata(&self.path)?.len()
            }
        };
        let needed = line.len() as u64 + 1;
        let size = if size > 0 && size + needed > self.max_bytes {
            self.rotate()?;
            self.reopen()?;
            0
        } else {
            size
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let Some(open) = self.open.as_mut() else {
            return Err(io::Error::other("file not open"));
        };
        if let Err(e) = open.file.write_all(&buf) {
            // A full disk may have taken part of the line: cut it off so the next
            // record does not start in the middle of a line.
            let _ = open.file.set_len(size);
            self.open = None;
            return Err(e);
        }
        Ok(())
    }

    /// Pushes what the OS holds to the disk (daemon exit).
    pub fn sync(&mut self) -> io::Result<()> {
        match self.open.as_mut() {
            Some(o) => o.file.sync_data(),
            None => Ok(()),
        }
    }

    /// `path` -> `path.1` -> ... -> `path.keep` (the oldest falls off); with `keep`
    /// 0 the file just starts over.
    fn rotate(&mut self) -> io::Result<()> {
        self.open = None;
        if self.keep == 0 {
            return ignore_missing(fs::remove_file(&self.path));
        }
        ignore_missing(fs::remove_file(self.rotated(self.keep)))?;
        for n in (1..self.keep).rev() {
            ignore_missing(fs::rename(self.rotated(n), self.rotated(n + 1)))?;
        }
        ignore_missing(fs::rename(&self.path, self.rotated(1)))
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(p: &Path) -> Vec<String> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A 9-byte line plus newline: 10 bytes on disk.
    fn rec(i: u32) -> Vec<u8> {
        format!("{{\"n\":{i:03}}}").into_bytes()
    }

    #[test]
    fn rotates_by_size_and_keeps_numbered_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/records.jsonl");
        // Room for 3 lines of 10 bytes.
        let mut f = FileSink::open(&path, 35, 2).unwrap();
        for i in 0..10 {
            f.append(&rec(i)).unwrap();
        }
        // 10 records, 3 per file: [0,1,2] [3,4,5] [6,7,8] [9]; two rotated files kept.
        assert_eq!(lines(&path), ["{\"n\":009}"]);
        assert_eq!(
            lines(&f.rotated(1)),
            ["{\"n\":006}", "{\"n\":007}", "{\"n\":008}"]
        );
        assert_eq!(
            lines(&f.rotated(2)),
            ["{\"n\":003}", "{\"n\":004}", "{\"n\":005}"]
        );
        assert!(!f.rotated(3).exists());
        for p in [path.clone(), f.rotated(1), f.rotated(2)] {
            assert!(
                fs::metadata(&p).unwrap().len() <= 35,
                "{p:?} over the bound"
            );
        }
    }

    #[test]
    fn exactly_full_file_does_not_rotate_early() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut f = FileSink::open(&path, 30, 1).unwrap();
        for i in 0..3 {
            f.append(&rec(i)).unwrap();
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), 30);
        assert!(!f.rotated(1).exists());
        f.append(&rec(3)).unwrap();
        assert_eq!(lines(&path), ["{\"n\":003}"]);
        assert_eq!(lines(&f.rotated(1)).len(), 3);
    }

    #[test]
    fn keep_zero_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut f = FileSink::open(&path, 25, 0).unwrap();
        for i in 0..5 {
            f.append(&rec(i)).unwrap();
        }
        assert_eq!(lines(&path), ["{\"n\":004}"]);
        assert!(!f.rotated(1).exists());
    }

    #[test]
    fn oversized_record_goes_whole_into_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut f = FileSink::open(&path, 20, 3).unwrap();
        f.append(&rec(0)).unwrap();
        let big = format!("{{\"big\":\"{}\"}}", "x".repeat(40));
        f.append(big.as_bytes()).unwrap();
        f.append(&rec(1)).unwrap();
        assert_eq!(lines(&f.rotated(2)), ["{\"n\":000}"]);
        assert_eq!(lines(&f.rotated(1)), [big]);
        assert_eq!(lines(&path), ["{\"n\":001}"]);
    }

    #[test]
    fn follows_a_moved_or_deleted_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut f = FileSink::open(&path, 1000, 2).unwrap();
        f.append(&rec(0)).unwrap();
        // logrotate's default: rename, then the daemon must write a new file.
        let moved = dir.path().join("r.jsonl-20240101");
        fs::rename(&path, &moved).unwrap();
        f.append(&rec(1)).unwrap();
        assert_eq!(lines(&moved), ["{\"n\":000}"]);
        assert_eq!(lines(&path), ["{\"n\":001}"]);
        fs::remove_file(&path).unwrap();
        f.append(&rec(2)).unwrap();
        assert_eq!(lines(&path), ["{\"n\":002}"]);
        // copytruncate: same inode, size back to 0; appends continue at the start.
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        f.append(&rec(3)).unwrap();
        assert_eq!(lines(&path), ["{\"n\":003}"]);
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        fs::write(&path, "{\"n\":100}\n{\"n\":101}\n").unwrap();
        let mut f = FileSink::open(&path, 30, 1).unwrap();
        f.append(&rec(0)).unwrap();
        f.append(&rec(1)).unwrap();
        assert_eq!(
            lines(&f.rotated(1)),
            ["{\"n\":100}", "{\"n\":101}", "{\"n\":000}"]
        );
        assert_eq!(lines(&path), ["{\"n\":001}"]);
    }

    #[test]
    fn unwritable_path_is_an_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").unwrap();
        // A directory cannot be created under a regular file.
        assert!(FileSink::open(&blocker.join("r.jsonl"), 100, 1).is_err());
    }
}
