//! A small file copied from a directory source to a file site in one blocking call: the
//! source file's checks, its read and MD5, then the replica's directories, data and sidecar,
//! with no hand-off between threads in the middle. On a file -> file drain the hand-offs to
//! the blocking pool (a thread woken, then the task woken back) were the largest single cost
//! (issue 17); the call goes through the source's queue of blocking jobs
//! ([`FileSource::run_blocking`]), so copies asked together share one hand-off. The replica
//! then joins the site's group commit like any other, so it is COMPLETED only once durable,
//! exactly as on the general path.
//!
//! Only for a first copy of an entry: an entry that may have been copied before (a replay, a
//! retry) takes the general path, which first asks the site whether the replica is there.

use crate::bandwidth::Limiter;
use crate::entry::Entry;
use crate::site::file::{FileSite, Written};
use crate::site::Durable;
use crate::source::file::{FileSource, Opened};

use super::processor::{is_current, CopyError};

/// Largest object copied this way: one read of the source ([`FileSource::open_current_blocking`]
/// reads a file of at most 256 KiB whole).
pub const LOCAL_MAX: u64 = 256 * 1024;

/// What [`copy_small`] did.
pub(super) enum Local {
    /// Read and written; the replica is durable once this resolves.
    Written(Durable),
    /// The file is not the entry's version any more, or is gone.
    Superseded,
    /// The file is a replica (another engine wrote it): not copied back.
    Replica,
    /// Not for this path (larger than one read now, or another bucket): the caller copies it
    /// the general way.
    Unsuited,
}

/// What the blocking call did.
enum Done {
    Written(Box<Written>),
    Superseded,
    Replica,
    Unsuited,
}

/// Copies `entry`'s version from `source` to `site` under `key` in one blocking call, after
/// taking its size from the site's bandwidth limit.
pub(super) async fn copy_small(
    source: &FileSource,
    site: &FileSite,
    entry: &Entry,
    key: &str,
    bandwidth: &Limiter,
) -> Result<Local, CopyError> {
    if entry.version.bucket != source.bucket() || entry.size > LOCAL_MAX {
        return Ok(Local::Unsuited);
    }
    // Charged up front, in the pieces the limiter hands out (the general path charges each
    // piece as it passes; an object this small is one or a few pieces).
    let mut left = usize::try_from(entry.size).unwrap_or(usize::MAX);
    while left > 0 {
        let n = bandwidth.piece_len().map_or(left, |p| p.clamp(1, left));
        bandwidth.acquire(n).await;
        left -= n;
    }
    let (me, writer) = (source.clone(), site.small_writer());
    let (entry, key) = (entry.clone(), key.to_string());
    // In the source's queue of blocking jobs: copies asked together share one hand-off.
    let done = source
        .run_blocking(move || -> Result<Done, CopyError> {
            let Some((info, opened)) = me.open_current_blocking(&entry.version.key)? else {
                return Ok(Done::Superseded);
            };
            if !is_current(&entry, &info) {
                return Ok(Done::Superseded);
            }
            if info.replica {
                return Ok(Done::Replica);
            }
            let (Opened::Whole(bytes), Some(md5)) = (opened, info.content_md5.as_deref()) else {
                return Ok(Done::Unsuited);
            };
            let written = writer.write(&key, &info, &[&bytes], md5)?;
            Ok(Done::Written(Box::new(written)))
        })
        .await??;
    Ok(match done {
        Done::Written(w) => Local::Written(site.commit_written(*w)),
        Done::Superseded => Local::Superseded,
        Done::Replica => Local::Replica,
        Done::Unsuited => Local::Unsuited,
    })
}
