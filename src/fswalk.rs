//! Directory trees walked in key byte order with bounded memory: what the file source's
//! listings and the file site's listings (and so `backbeat verify`) read.
//!
//! A directory is read in chunks: each pass over it keeps only the [`CHUNK`] smallest names
//! after the last one visited (a bounded heap), so a directory of a million files costs a few
//! megabytes and a few passes, never its whole name list. A directory's key is its name
//! followed by `/`, so `a/` sorts where its files do (`a.txt` < `a/x` < `a0`).

use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::Path;

/// Names kept per pass over one directory.
pub const CHUNK: usize = 65_536;

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its key: the directory's key prefix, its name as a key segment, and `/` for a
    /// directory.
    pub key: String,
    /// Its name on disk.
    pub name: OsString,
    /// Whether it is a directory (else a regular file; other kinds are not listed).
    pub is_dir: bool,
}

impl Ord for DirEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.as_bytes().cmp(other.key.as_bytes())
    }
}

impl PartialOrd for DirEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Maps a name on disk to its key segment; `None` skips the entry (a sidecar, a temporary
/// file, a name that is not a key).
pub type NameOf<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The `limit` smallest entries of directory `dir` (key prefix `dir_key`, `""` or ending
/// with `/`) that `include` accepts, in key byte order, and whether more were accepted.
/// A directory that is not there (any more) has no entries.
///
/// # Errors
/// An I/O error other than "not found".
pub fn sorted_chunk(
    dir: &Path,
    dir_key: &str,
    name_of: NameOf<'_>,
    include: &dyn Fn(&str, bool) -> bool,
    limit: usize,
) -> std::io::Result<(Vec<DirEntry>, bool)> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if is_gone(&e) => return Ok((Vec::new(), false)),
        Err(e) => return Err(e),
    };
    let limit = limit.max(1);
    let mut heap: BinaryHeap<DirEntry> = BinaryHeap::new();
    let mut more = false;
    for entry in rd {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let name = entry.file_name();
        let Some(seg) = name.to_str().and_then(name_of) else {
            continue;
        };
        let ft = match entry.file_type() {
            Ok(t) => t,
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let is_dir = ft.is_dir();
        if !is_dir && !ft.is_file() {
            continue;
        }
        let mut key = String::with_capacity(dir_key.len() + seg.len() + 1);
        key.push_str(dir_key);
        key.push_str(&seg);
        if is_dir {
            key.push('/');
        }
        if !include(&key, is_dir) {
            continue;
        }
        if heap.len() >= limit {
            // Full: keep it only if it sorts before the largest kept.
            match heap.peek() {
                Some(top) if key.as_bytes() < top.key.as_bytes() => {
                    heap.pop();
                }
                _ => {
                    more = true;
                    continue;
                }
            }
            more = true;
        }
        heap.push(DirEntry { key, name, is_dir });
    }
    Ok((heap.into_sorted_vec(), more))
}

/// Visits every regular file under directory `dir` (key prefix `dir_key`) whose key starts
/// with `prefix` and sorts after `after`, in key byte order: `visit(key, path)` returns
/// `false` to stop. Returns `false` when stopped. Holds at most [`CHUNK`] names per directory
/// level.
///
/// # Errors
/// An I/O error other than "not found", or one `visit` returned.
pub fn walk(
    dir: &Path,
    dir_key: &str,
    prefix: &str,
    after: Option<&str>,
    name_of: NameOf<'_>,
    visit: &mut dyn FnMut(&str, &Path) -> std::io::Result<bool>,
) -> std::io::Result<bool> {
    walk_chunked(dir, dir_key, prefix, after, name_of, visit, CHUNK)
}

fn walk_chunked(
    dir: &Path,
    dir_key: &str,
    prefix: &str,
    after: Option<&str>,
    name_of: NameOf<'_>,
    visit: &mut dyn FnMut(&str, &Path) -> std::io::Result<bool>,
    chunk: usize,
) -> std::io::Result<bool> {
    // After the first pass, entries after the last one visited.
    let mut last: Option<String> = None;
    loop {
        let include = |key: &str, is_dir: bool| {
            let in_prefix = key.starts_with(prefix) || (is_dir && prefix.starts_with(key));
            if !in_prefix {
                return false;
            }
            match (&last, after) {
                (Some(l), _) => key.as_bytes() > l.as_bytes(),
                (None, Some(a)) => key > a || (is_dir && a.starts_with(key)),
                (None, None) => true,
            }
        };
        let (entries, more) = sorted_chunk(dir, dir_key, name_of, &include, chunk)?;
        for e in &entries {
            let path = dir.join(&e.name);
            if e.is_dir {
                // The cursor applies inside the directory that holds it; every key of a later
                // directory sorts after it.
                let inner = after.filter(|a| a.starts_with(e.key.as_str()));
                if !walk_chunked(&path, &e.key, prefix, inner, name_of, visit, chunk)? {
                    return Ok(false);
                }
            } else if !visit(&e.key, &path)? {
                return Ok(false);
            }
        }
        match (more, entries.last()) {
            (true, Some(l)) => last = Some(l.key.clone()),
            _ => return Ok(true),
        }
    }
}

/// Whether `e` says the entry went away (or a path component is not a directory).
pub fn is_gone(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for f in files {
            let p = t.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        t
    }

    fn keys(root: &Path, prefix: &str, after: Option<&str>, chunk: usize) -> Vec<String> {
        let mut out = Vec::new();
        let same = |n: &str| Some(n.to_string());
        walk_chunked(
            root,
            "",
            prefix,
            after,
            &same,
            &mut |k, p| {
                assert!(p.is_file());
                out.push(k.to_string());
                Ok(true)
            },
            chunk,
        )
        .unwrap();
        out
    }

    #[test]
    fn walks_in_key_byte_order_in_chunks_from_a_cursor_within_a_prefix() {
        let files = [
            "a.txt", "a/x", "a/y/z", "a0", "b", "é", "Z", "a/y.txt", "c/d/e", "c/d0",
        ];
        let t = tree(&files);
        let mut want: Vec<String> = files.iter().map(|s| s.to_string()).collect();
        want.sort();
        for chunk in [1, 2, 3, 100] {
            assert_eq!(keys(t.path(), "", None, chunk), want, "chunk {chunk}");
            for (i, c) in want.iter().enumerate() {
                assert_eq!(
                    keys(t.path(), "", Some(c), chunk),
                    want[i + 1..],
                    "after {c}"
                );
            }
            // A cursor that is not a key, inside a directory and before it.
            assert_eq!(keys(t.path(), "", Some("a/"), chunk), want[2..]);
            assert_eq!(keys(t.path(), "", Some("a/xx"), chunk), want[3..]);
            assert_eq!(
                keys(t.path(), "a/", None, chunk),
                ["a/x", "a/y.txt", "a/y/z"]
            );
            assert_eq!(keys(t.path(), "a/y", None, chunk), ["a/y.txt", "a/y/z"]);
            assert_eq!(keys(t.path(), "c/d", Some("c/d/e"), chunk), ["c/d0"]);
        }
        assert!(keys(&t.path().join("nowhere"), "", None, 2).is_empty());
    }

    #[test]
    fn a_chunk_keeps_the_smallest_names_and_says_more_follow() {
        let t = tree(&["d", "b", "e", "a", "c"]);
        let same = |n: &str| Some(n.to_string());
        let all = |_: &str, _: bool| true;
        let (got, more) = sorted_chunk(t.path(), "", &same, &all, 2).unwrap();
        let got: Vec<&str> = got.iter().map(|e| e.key.as_str()).collect();
        assert_eq!((got, more), (vec!["a", "b"], true));
        let (got, more) = sorted_chunk(t.path(), "", &same, &all, 5).unwrap();
        assert_eq!((got.len(), more), (5, false));
        // Skipped names never count.
        let no_c = |n: &str| (n != "c").then(|| n.to_string());
        let (got, more) = sorted_chunk(t.path(), "", &no_c, &all, 4).unwrap();
        assert_eq!((got.len(), more), (4, false));
    }
}
