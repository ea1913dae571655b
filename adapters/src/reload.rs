//! Files read again while the service runs: the local authority's keys, static key sources'
//! files, the TLS certificate. Each is a [`Reloadable`]; the application calls them on SIGHUP
//! and on a poll. A reload swaps the new contents in atomically, or, when they do not load,
//! keeps the previous ones and says why (the authority's key files may also be held for one
//! poll, see [`crate::authority::AuthorityFiles`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ring::digest::{Context, Digest, SHA256};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The operator (SIGHUP): what the files hold now is what they mean, use it.
    Signal,
    /// The poll noticed the files changed: they may still be half-way through an update.
    Poll,
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold what was last read (or are being written right now): nothing swapped.
    Unchanged,
    /// New contents are in use; the text says what is in use now (key ids, never key material).
    Changed(String),
    /// New contents that load but remove keys in use, noticed by a poll: the previous ones
    /// stay in use until the next poll finds the files the same (or a SIGHUP); the text says
    /// what would be removed.
    Held(String),
    /// New contents that do not load: the previous ones stay in use; the text says why.
    Failed(String),
}

/// Something configured from files that can be read again while serving.
pub trait Reloadable: Send + Sync {
    /// What the files are for, in logs, metrics and readiness: `tls`, `local-authority`, or a
    /// static key source's name.
    fn name(&self) -> &str;

    /// Reads the files again and swaps in what they hold, when it changed and loads. Blocking
    /// (file reads, key parsing): call it off the async workers.
    fn reload(&self, trigger: Trigger) -> Reloaded;
}

/// What one file held when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContents {
    Missing,
    /// Exists but cannot be read (permissions, a directory, ...): the error's text.
    Unreadable(String),
    Read(Vec<u8>),
}

/// Key, certificate and JWKS files are a few KiB; a path that names something larger (a log, a
/// device) is refused rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

impl FileContents {
    /// Reads a regular file (through links) of at most [`MAX_FILE_BYTES`]; a FIFO or a device
    /// is refused, and never blocks the read: the file is opened without blocking (`O_NONBLOCK`:
    /// opening a FIFO without a writer returns at once) and the file opened is the one checked
    /// (`fstat`), so a path swapped between a regular file and a FIFO cannot slip one past.
    pub fn read(path: &Path) -> Self {
        use std::io::Read as _;
        let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let file = match open_without_blocking(path) {
            Ok(file) => file,
            Err(e) if not_found(&e) => return FileContents::Missing,
            Err(e) => return FileContents::Unreadable(e.to_string()),
        };
        match file.metadata() {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return FileContents::Unreadable("not a regular file".into()),
            Err(e) => return FileContents::Unreadable(e.to_string()),
        }
        let mut bytes = Vec::new();
        match file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
            Ok(_) if bytes.len() as u64 > MAX_FILE_BYTES => FileContents::Unreadable(format!(
                "larger than {MAX_FILE_BYTES} bytes: not a key or certificate file"
            )),
            Ok(_) => FileContents::Read(bytes),
            Err(e) => FileContents::Unreadable(e.to_string()),
        }
    }

    /// The bytes, or why there are none (naming the file).
    pub fn bytes(&self, path: &Path) -> Result<&[u8], String> {
        match self {
            FileContents::Read(b) => Ok(b),
            FileContents::Missing => Err(format!("{} does not exist", path.display())),
            FileContents::Unreadable(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Opens `path` for reading without waiting for a writer (a regular file reads the same either
/// way).
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// A group of files read together, which remembers a digest of what it last handed out so that
/// a poll only reloads what changed (and a file that fails to load is not retried, and logged,
/// on every poll). Only the digest is kept, never a copy of a private key.
pub struct WatchedFiles {
    paths: Vec<PathBuf>,
    last: Mutex<Option<Digest>>,
    /// How long the files must stay the same before they are used: a writer that replaces them
    /// one after the other is not caught half-way.
    settle: Duration,
}

/// The usual settle time: long enough to see a `cp` of a few files through, short enough that
/// a SIGHUP takes effect at once for a person watching.
pub const SETTLE: Duration = Duration::from_millis(200);

impl WatchedFiles {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            last: Mutex::new(None),
            settle: SETTLE,
        }
    }

    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Records what was loaded at start-up, so that the first poll does not load it again.
    pub fn seen(&self, contents: &[FileContents]) {
        *self.last.lock().expect("not poisoned") = Some(digest(contents));
    }

    /// The files' contents, one per path, when they differ from the last contents handed out
    /// and stayed the same over the settle time; `None` otherwise. Contents handed out count as
    /// seen whether or not they then load.
    pub fn read_if_changed(&self) -> Option<Vec<FileContents>> {
        match self.read() {
            Reading::Changed(contents) => Some(contents),
            Reading::Same | Reading::Settling => None,
        }
    }

    /// What the files hold compared with the last contents handed out (see
    /// [`read_if_changed`](Self::read_if_changed)).
    pub fn read(&self) -> Reading {
        let read =
            || -> Vec<FileContents> { self.paths.iter().map(|p| FileContents::read(p)).collect() };
        let first = read();
        let first_digest = digest(&first);
        if self
            .last
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(Digest::as_ref)
            == Some(first_digest.as_ref())
        {
            return Reading::Same;
        }
        if !self.settle.is_zero() {
            std::thread::sleep(self.settle);
            let second = read();
            if digest(&second).as_ref() != first_digest.as_ref() {
                // Being written: the next reload sees it finished.
                return Reading::Settling;
            }
        }
        *self.last.lock().expect("not poisoned") = Some(first_digest);
        Reading::Changed(first)
    }
}

/// What [`WatchedFiles::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reading {
    /// What was last handed out.
    Same,
    /// Other contents, still changing over the settle time.
    Settling,
    /// Other contents, stable: handed out (and from now on what `Same` compares with).
    Changed(Vec<FileContents>),
}

fn digest(contents: &[FileContents]) -> Digest {
    let mut ctx = Context::new(&SHA256);
    for c in contents {
        let (tag, bytes): (u8, &[u8]) = match c {
            FileContents::Missing => (0, &[]),
            FileContents::Unreadable(e) => (1, e.as_bytes()),
            FileContents::Read(b) => (2, b),
        };
        ctx.update(&[tag]);
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    }
    ctx.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("reload-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn only_changed_contents_are_handed_out() {
        let d = dir();
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::write(&a, "one").unwrap();
        let files = WatchedFiles::new(vec![a.clone(), b.clone()]).with_settle(Duration::ZERO);
        files.seen(&[FileContents::Read(b"one".to_vec()), FileContents::Missing]);
        assert_eq!(files.read_if_changed(), None, "as loaded at start");
        std::fs::write(&b, "two").unwrap();
        assert_eq!(
            files.read_if_changed(),
            Some(vec![
                FileContents::Read(b"one".to_vec()),
                FileContents::Read(b"two".to_vec())
            ])
        );
        assert_eq!(files.read_if_changed(), None, "handed out once");
        std::fs::remove_file(&a).unwrap();
        assert_eq!(
            files.read_if_changed().unwrap()[0],
            FileContents::Missing,
            "a file removed is a change"
        );
        // Same length, other bytes.
        std::fs::write(&a, "uno").unwrap();
        files.read_if_changed().unwrap();
        std::fs::write(&a, "one").unwrap();
        assert!(files.read_if_changed().is_some());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn files_being_written_wait_for_the_next_reload() {
        let d = dir();
        let a = d.join("a");
        std::fs::write(&a, "old").unwrap();
        let files = WatchedFiles::new(vec![a.clone()]).with_settle(Duration::from_millis(300));
        files.seen(&[FileContents::Read(b"old".to_vec())]);
        let writer = {
            let a = a.clone();
            std::thread::spawn(move || {
                std::fs::write(&a, "half").unwrap();
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(&a, "new").unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            files.read_if_changed(),
            None,
            "changed during the settle time"
        );
        writer.join().unwrap();
        assert_eq!(
            files.read_if_changed(),
            Some(vec![FileContents::Read(b"new".to_vec())])
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn oversized_files_and_fifos_are_refused_without_blocking() {
        let d = dir();
        let big = d.join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(
            matches!(FileContents::read(&big), FileContents::Unreadable(e) if e.contains("larger"))
        );
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize]).unwrap();
        assert!(
            matches!(FileContents::read(&big), FileContents::Read(b) if b.len() == MAX_FILE_BYTES as usize)
        );
        #[cfg(unix)]
        {
            let fifo = d.join("fifo");
            let status = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(status.success());
            // Reading a FIFO without a writer would block forever.
            assert!(matches!(
                FileContents::read(&fifo),
                FileContents::Unreadable(_)
            ));
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    /// Issue 17, item 4: a path that flips between a regular file and a FIFO once hung the
    /// reloader for good (checked as a file, opened as a FIFO: `open` waits for a writer).
    #[cfg(unix)]
    #[test]
    fn a_path_flipping_between_a_file_and_a_fifo_never_blocks_a_read() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let d = dir();
        let regular = d.join("regular");
        std::fs::write(&regular, b"key").unwrap();
        let fifo = d.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let path = d.join("key.pem");
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (d, path, stop, fifo) = (d.clone(), path.clone(), stop.clone(), fifo.clone());
            std::thread::spawn(move || {
                let tmp = d.join("next");
                while !stop.load(Ordering::Relaxed) {
                    for target in [&regular, &fifo] {
                        let _ = std::fs::remove_file(&tmp);
                        std::os::unix::fs::symlink(target, &tmp).unwrap();
                        std::fs::rename(&tmp, &path).unwrap();
                    }
                }
            })
        };
        let reads = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (path, reads) = (path.clone(), reads.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let _ = FileContents::read(&path);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let mut last = (0, std::time::Instant::now());
        while !reader.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            let now = reads.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, std::time::Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(5) {
                stop.store(true, Ordering::Relaxed);
                // Free the blocked reader before failing: a writer lets its open return.
                let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
                panic!("a read blocked on the FIFO after {now} reads");
            }
        }
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        println!(
            "{} reads of a path flipping between a file and a FIFO",
            reads.load(Ordering::Relaxed)
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_unreadable_file_is_reported_once() {
        let d = dir();
        let sub = d.join("a-directory");
        std::fs::create_dir_all(&sub).unwrap();
        let files = WatchedFiles::new(vec![sub.clone()]).with_settle(Duration::ZERO);
        let first = files.read_if_changed().expect("first read is a change");
        assert!(matches!(first[0], FileContents::Unreadable(_)));
        assert!(first[0].bytes(&sub).unwrap_err().contains("a-directory"));
        assert_eq!(files.read_if_changed(), None);
        std::fs::remove_dir_all(d).unwrap();
    }
}
