//! The watch of a [`FileSource`](super::FileSource): inotify on each directory of the tree,
//! read by one thread of its own.
//!
//! - What is watched: a file closed after writing, an entry created, moved in, moved out or
//!   deleted, and a watched directory itself deleted or moved. Not opens, reads, writes in
//!   progress or attribute changes: the engine's own reads of a file wake nothing, and a file
//!   being written is told once, when it is closed.
//! - The thread blocks in `read` while nothing happens (no CPU when idle). After each batch
//!   it sleeps [`LINGER`], so a burst of files is read in a few large reads instead of one
//!   wake-up per event; the kernel queues the events meanwhile (up to
//!   `fs.inotify.max_queued_events`; an overflow is a [`WatchEvent::Rescan`]).
//! - A directory created or moved in is watched, its whole subtree, before it is reported:
//!   the walk that follows finds what was there, the watch tells what comes after. A
//!   directory moved out loses its watches (what happens there is no longer ours) and is
//!   reported as gone, so that its files' deletions are found at once.
//! - Symbolic links are not followed (a link could lead out of the tree).
//! - A directory that cannot be watched (`fs.inotify.max_user_watches`, permissions) leaves
//!   part of the tree unwatched: the source's watch generation is cleared for as long as this
//!   watch runs, so every pass reads every directory, and the rest of the tree is still
//!   watched.
//! - Stopping: dropping [`FileWatch`] removes the root's watch, which wakes the thread with
//!   `IN_IGNORED`; it ends and closes the inotify descriptor (and so every other watch).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use rustix::io::Errno;

use super::{bump, is_reserved, key_of, next_generation};
use crate::source::SourceError;

/// How long the thread sleeps after a batch of events, gathering the next.
const LINGER: Duration = Duration::from_millis(5);

/// Bytes read at once (an event is 16 bytes and its name, so a thousand events or more).
const BUFFER: usize = 64 * 1024;

/// What the watch of a [`FileSource`](super::FileSource) saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A file was closed after writing, or renamed in: its key.
    Written(String),
    /// A file was removed or moved out: its key.
    Removed(String),
    /// A directory was created or moved in: its key prefix (`dir/`), to be walked at once.
    Directory(String),
    /// A directory was moved out (or removed): its key prefix (`dir/`). Its files' records
    /// are to be compared with the tree (a pass of the bucket reads the directories that
    /// changed, its parent among them).
    DirectoryGone(String),
    /// Events were lost (the kernel queue overflowed, the channel was full, a watch failed):
    /// the whole tree is to be rescanned.
    Rescan,
}

/// The changes of a watched [`FileSource`](super::FileSource); watching stops when this is
/// dropped.
pub struct FileWatch {
    /// The events, in order; when the channel is full events are dropped and a
    /// [`WatchEvent::Rescan`] follows once there is room again.
    pub events: tokio::sync::mpsc::Receiver<WatchEvent>,
    /// The source's watch generation, cleared when the watch stops.
    generation: Arc<AtomicU64>,
    /// Tells the thread to end.
    stop: Arc<AtomicBool>,
    /// The inotify descriptor, shared with the thread.
    fd: Arc<OwnedFd>,
    /// The root's watch: removing it wakes the thread.
    root_wd: i32,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.generation.store(0, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        // Wakes the thread if it waits in `read` (it gets IN_IGNORED). An error means the
        // root's watch is gone already, and the thread has ended on it.
        let _ = inotify::remove_watch(&*self.fd, self.root_wd);
    }
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

/// The events a directory is watched for.
fn mask() -> WatchFlags {
    WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
}

/// Watches `root`'s tree; at most `capacity` events wait in the channel. `generation` is the
/// source's: set once every directory is watched, bumped when events are lost, cleared
/// while part of the tree cannot be watched.
pub(super) fn start(
    root: &Path,
    capacity: usize,
    generation: Arc<AtomicU64>,
) -> Result<FileWatch, SourceError> {
    let cannot = |e: &dyn std::fmt::Display| {
        SourceError::Transient(format!("cannot watch {}: {e}", root.display()))
    };
    // Not watched until every directory is.
    generation.store(0, Ordering::Release);
    let fd = Arc::new(inotify::init(inotify::CreateFlags::CLOEXEC).map_err(|e| cannot(&e))?);
    let root_wd = inotify::add_watch(&*fd, root, mask()).map_err(|e| cannot(&e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    let mut tree = Tree {
        fd: fd.clone(),
        root: root.to_path_buf(),
        root_wd,
        dirs: HashMap::from([(root_wd, root.to_path_buf())]),
        generation: generation.clone(),
        partial: false,
        out: Out {
            tx,
            lost: false,
            generation: generation.clone(),
        },
    };
    tree.watch_below(root);
    if !tree.partial {
        generation.store(next_generation(), Ordering::Release);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("backbeat-watch".into())
        .spawn(move || tree.run(&stopped))
    {
        // Nothing watches after all.
        generation.store(0, Ordering::Release);
        return Err(cannot(&e));
    }
    Ok(FileWatch {
        events: rx,
        generation,
        stop,
        fd,
        root_wd,
    })
}

/// The sending end: drops events while the channel is full, then sends a rescan.
struct Out {
    tx: tokio::sync::mpsc::Sender<WatchEvent>,
    /// Set when an event could not be sent: a rescan is owed once there is room.
    lost: bool,
    generation: Arc<AtomicU64>,
}

impl Out {
    /// Sends `ev`; `false` once nobody listens.
    fn send(&mut self, ev: WatchEvent) -> bool {
        use tokio::sync::mpsc::error::TrySendError;
        if ev == WatchEvent::Rescan {
            bump(&self.generation);
        }
        if self.lost {
            match self.tx.try_send(WatchEvent::Rescan) {
                Ok(()) => self.lost = false,
                Err(TrySendError::Closed(_)) => return false,
                Err(TrySendError::Full(_)) => return true,
            }
        }
        match self.tx.try_send(ev) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(_)) => {
                self.lost = true;
                bump(&self.generation);
                tracing::debug!("File watch channel full; a rescan will catch up.");
                true
            }
        }
    }
}

/// What [`Tree::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Added {
    Watched,
    /// No such directory any more.
    Gone,
    /// It could not be watched (the tree is partial).
    Failed,
}

/// What the thread keeps: the watched directories and where events go.
struct Tree {
    fd: Arc<OwnedFd>,
    root: PathBuf,
    root_wd: i32,
    /// Each watch's directory.
    dirs: HashMap<i32, PathBuf>,
    generation: Arc<AtomicU64>,
    /// Some directory could not be watched: the generation stays cleared.
    partial: bool,
    out: Out,
}

impl Tree {
    /// Watches every directory below `top` (which is watched already), depth first. A
    /// directory gone meanwhile is skipped; one that cannot be watched marks the tree partial.
    fn watch_below(&mut self, top: &Path) {
        let mut stack = vec![top.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if crate::fswalk::is_gone(&e) => continue,
                Err(e) => {
                    self.cannot_watch(&dir, &e);
                    continue;
                }
            };
            for entry in entries.flatten() {
                // A link's type is a link: links are not followed.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                if name.to_str().is_none_or(is_reserved) {
                    continue;
                }
                let path = entry.path();
                if self.add(&path) == Added::Watched {
                    stack.push(path);
                }
            }
        }
    }

    /// Watches directory `dir` itself.
    fn add(&mut self, dir: &Path) -> Added {
        match inotify::add_watch(&*self.fd, dir, mask()) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                Added::Watched
            }
            // Removed, or replaced by something else, since it was seen.
            Err(Errno::NOENT | Errno::NOTDIR) => Added::Gone,
            Err(e) => {
                self.cannot_watch(dir, &e);
                Added::Failed
            }
        }
    }

    fn cannot_watch(&mut self, dir: &Path, error: &dyn std::fmt::Display) {
        if !self.partial {
            tracing::warn!(
                dir = %dir.display(),
                %error,
                "Cannot watch a directory of the source: every pass reads every directory \
                 while this lasts (the limit is fs.inotify.max_user_watches)."
            );
        }
        self.partial = true;
        self.generation.store(0, Ordering::Release);
    }

    /// Forgets the watches of `dir` and of every directory below it (moved out).
    fn unwatch(&mut self, dir: &Path) {
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(_, p)| p.starts_with(dir))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = inotify::remove_watch(&*self.fd, wd);
        }
    }

    /// Reads and handles events until stopped, the root goes, or nobody listens.
    fn run(mut self, stop: &AtomicBool) {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); BUFFER];
        let fd = self.fd.clone();
        let mut reader = inotify::Reader::new(&*fd, &mut buf);
        loop {
            let (wd, flags, name) = match reader.next() {
                Ok(ev) => (
                    ev.wd(),
                    ev.events(),
                    ev.file_name()
                        .map(|n| PathBuf::from(OsStr::from_bytes(n.to_bytes()))),
                ),
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "Reading the file watch failed; it ends.");
                    self.out.send(WatchEvent::Rescan);
                    return;
                }
            };
            if stop.load(Ordering::Acquire) || !self.handle(wd, flags, name.as_deref()) {
                return;
            }
            if reader.is_buffer_empty() {
                std::thread::sleep(LINGER);
                if stop.load(Ordering::Acquire) {
                    return;
                }
            }
        }
    }

    /// Handles one event; `false` when the watch is to end.
    fn handle(&mut self, wd: i32, flags: ReadFlags, name: Option<&Path>) -> bool {
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            tracing::debug!("The kernel's queue of file events overflowed; rescanning.");
            return self.out.send(WatchEvent::Rescan);
        }
        if flags.contains(ReadFlags::IGNORED) {
            // The watch is gone: its directory was deleted, unmounted, or unwatched here.
            self.dirs.remove(&wd);
            if wd == self.root_wd {
                tracing::error!(root = %self.root.display(), "The watched directory is gone.");
                self.out.send(WatchEvent::Rescan);
                return false;
            }
            return true;
        }
        let Some(dir) = self.dirs.get(&wd) else {
            // A watch just forgotten (moved out): not ours any more.
            return true;
        };
        let Some(name) = name else {
            // About a watched directory itself: a deletion ends in IN_IGNORED; a directory
            // moved is told by its parent, except the root.
            if wd == self.root_wd && flags.contains(ReadFlags::MOVE_SELF) {
                tracing::error!(root = %self.root.display(), "The watched directory was moved.");
                return self.out.send(WatchEvent::Rescan);
            }
            return true;
        };
        let path = dir.join(name);
        let Some(key) = key_of(&self.root, &path) else {
            return true;
        };
        let is_dir = flags.contains(ReadFlags::ISDIR);
        let event = if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) && is_dir {
            match self.add(&path) {
                Added::Watched => self.watch_below(&path),
                Added::Gone => return true,
                // Not watched (the tree is partial now), still walked.
                Added::Failed => {}
            }
            WatchEvent::Directory(format!("{key}/"))
        } else if flags.contains(ReadFlags::CLOSE_WRITE) && !is_dir
            || flags.contains(ReadFlags::MOVED_TO)
        {
            WatchEvent::Written(key)
        } else if flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::DELETE) && is_dir {
            // Moved out: what happens there is no longer ours. Removed: the kernel has ended
            // its watch already (dropping our record of it is all that is left), and its files
            // were told one by one; the pass finds nothing more.
            self.unwatch(&path);
            WatchEvent::DirectoryGone(format!("{key}/"))
        } else if flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::DELETE) {
            WatchEvent::Removed(key)
        } else {
            // A file created: told once closed.
            return true;
        };
        self.out.send(event)
    }
}
