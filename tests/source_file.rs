//! The `file` source on a temporary directory: listings in key byte order, the current version
//! of a key, ranged reads refused once the file changed, the watch, and keys that must never
//! reach outside the directory.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use backbeat::model::{ByteStream, ObjectInfo, VersionRef};
use backbeat::source::file::{FileSource, WatchEvent};
use backbeat::source::{KeyPage, Source, SourceError};
use futures_util::StreamExt;

/// The listed item of `key` in `page`.
fn item(page: &KeyPage, key: &str) -> ObjectInfo {
    page.items
        .iter()
        .find(|o| o.version.key == key)
        .unwrap()
        .clone()
}

async fn collect(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

fn tree() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir_all(root.join("a/b"))?;
    std::fs::create_dir_all(root.join("z"))?;
    std::fs::write(root.join("a/b/c.txt"), b"abc")?;
    std::fs::write(root.join("a/one"), b"1")?;
    std::fs::write(root.join("a-c"), b"hyphen")?;
    std::fs::write(root.join("top"), b"top level")?;
    std::fs::write(root.join("z/with space é"), b"unicode")?;
    std::fs::write(root.join("empty"), b"")?;
    Ok(dir)
}

#[tokio::test]
async fn listing_pages_cover_every_file_once_in_key_byte_order() -> anyhow::Result<()> {
    let dir = tree()?;
    let src = FileSource::new(dir.path().join("inbox"))?.with_page_size(2);
    assert_eq!(src.buckets(), vec!["inbox".to_string()]);
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = src.list_current("inbox", cursor.as_deref()).await?;
        pages += 1;
        assert!(page.items.len() <= 2);
        keys.extend(page.items.iter().map(|v| v.version.key.clone()));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
        assert!(pages < 20, "listing does not end");
    }
    // Byte order, as S3 and the state store sort keys: `a-c` before `a/...`.
    assert_eq!(
        keys,
        vec![
            "a-c",
            "a/b/c.txt",
            "a/one",
            "empty",
            "top",
            "z/with space é"
        ]
    );
    let unique: BTreeSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    assert!(matches!(
        src.list_current("other", None).await,
        Err(SourceError::NotFound(_))
    ));
    Ok(())
}

#[tokio::test]
async fn current_and_ranges_follow_the_file_and_refuse_a_changed_one() -> anyhow::Result<()> {
    let dir = tree()?;
    let root = dir.path().join("inbox");
    let src = FileSource::new(&root)?;
    let page = src.list_current("inbox", None).await?;
    let top = item(&page, "top");
    assert_eq!(top.size, 9);
    assert!(!top.is_delete_marker);
    assert!(top.last_modified.ends_with('Z'), "{}", top.last_modified);
    assert_eq!(top.etag, top.version.version_id);

    let cur = src.current("inbox", "top").await?.expect("current");
    assert_eq!(cur, top);
    let get = |r| src.get_range(&top.version, &top.etag, r);
    assert_eq!(collect(get((4, 8)).await?).await?, b"level");
    assert_eq!(collect(get((0, 0)).await?).await?, b"t");
    assert!(matches!(get((4, 9)).await, Err(SourceError::Invalid(_))));

    // The version id is stable (restart = a new FileSource).
    let again = FileSource::new(&root)?.current("inbox", "top").await?;
    assert_eq!(again.map(|o| o.version), Some(top.version.clone()));

    // A changed file is a new current version; ranges of the old one are refused.
    std::fs::write(root.join("top"), b"top level, changed")?;
    let new_top = src.current("inbox", "top").await?.unwrap();
    assert_ne!(new_top.version.version_id, top.version.version_id);
    assert_eq!(new_top.size, 18);
    assert!(matches!(
        src.get_range(&top.version, &top.etag, (0, 3)).await,
        Err(SourceError::NotFound(_))
    ));

    // A removed file has no current version.
    std::fs::remove_file(root.join("top"))?;
    assert_eq!(src.current("inbox", "top").await?, None);
    assert_eq!(src.replication_rules("inbox").await?, None);
    Ok(())
}

#[tokio::test]
async fn open_current_gives_metadata_data_and_the_md5_when_asked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir_all(root.join("d"))?;
    // One file read whole in one call, one larger than a chunk (streamed), one empty.
    let small = b"small body".to_vec();
    let large: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("d/small"), &small)?;
    std::fs::write(root.join("large"), &large)?;
    std::fs::write(root.join("empty"), b"")?;
    let src = FileSource::new(&root)?;
    for (key, body) in [
        ("d/small", &small[..]),
        ("large", &large[..]),
        ("empty", &b""[..]),
    ] {
        let (info, stream) = src
            .open_current("inbox", key, true)
            .await?
            .expect("current version opens");
        assert_eq!(info.size, body.len() as u64);
        let md5 = backbeat::checksum::hex(&backbeat::checksum::md5(body));
        assert_eq!(info.content_md5.as_deref(), Some(md5.as_str()), "{key}");
        assert_eq!(collect(stream.unwrap()).await?, body, "{key}");
    }
    // Without asking, a large file's MD5 is not computed (no second read).
    let (info, _) = src.open_current("inbox", "large", false).await?.unwrap();
    assert_eq!(info.content_md5, None);

    // A symbolic link is not an object, even under a real name; keys cannot leave the root;
    // other buckets are refused.
    std::os::unix::fs::symlink(root.join("large"), root.join("link"))?;
    assert!(src.open_current("inbox", "link", false).await?.is_none());
    assert!(src.open_current("inbox", "../x", false).await?.is_none());
    assert!(matches!(
        src.open_current("other", "large", false).await,
        Err(SourceError::NotFound(_))
    ));
    Ok(())
}

#[tokio::test]
async fn keys_cannot_reach_outside_the_directory() -> anyhow::Result<()> {
    let dir = tree()?;
    std::fs::write(dir.path().join("secret"), b"secret")?;
    let src = FileSource::new(dir.path().join("inbox"))?;
    for key in ["../secret", "a/../../secret", "/etc/passwd", "", "a//one"] {
        assert_eq!(src.current("inbox", key).await?, None, "{key:?}");
        let v = VersionRef::new("inbox", key, "x");
        assert!(src.get_range(&v, "x", (0, 0)).await.is_err(), "{key:?}");
    }
    // A symbolic link to the outside is not an object.
    std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("inbox/link"))?;
    std::os::unix::fs::symlink(dir.path(), dir.path().join("inbox/dirlink"))?;
    let page = src.list_current("inbox", None).await?;
    assert!(page.items.iter().all(|v| !v.version.key.contains("link")));
    Ok(())
}

#[tokio::test]
async fn a_file_changed_while_read_fails_the_stream() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir(&root)?;
    std::fs::write(root.join("f"), vec![1u8; 1024 * 1024])?;
    let src = FileSource::new(&root)?;
    let (_, s) = src.open_current("inbox", "f", false).await?.unwrap();
    let mut s = s.unwrap();
    let first = s.next().await.unwrap()?;
    assert!(!first.is_empty());
    std::fs::write(root.join("f"), vec![2u8; 10])?;
    let mut failed = false;
    while let Some(c) = s.next().await {
        if c.is_err() {
            failed = true;
        }
    }
    assert!(failed, "a torn read completed");
    Ok(())
}

async fn next_event(w: &mut backbeat::source::file::FileWatch) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), w.events.recv())
        .await
        .expect("an event within 5 s")
        .expect("watch open")
}

#[tokio::test]
async fn the_watch_tells_closed_files_moved_directories_removals_and_lost_events(
) -> anyhow::Result<()> {
    let _alone = WATCHING.lock().await;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir_all(root.join("sub"))?;
    let src = FileSource::new(&root)?;
    let mut watch = src.watch(64)?;

    // A file being written is told once it is closed, not before.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(root.join("sub/new file"))?;
        f.write_all(b"hel")?;
        f.flush()?;
        let early = tokio::time::timeout(Duration::from_millis(200), watch.events.recv()).await;
        assert!(early.is_err(), "told before the close: {early:?}");
        f.write_all(b"lo")?;
    }
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Written("sub/new file".into())
    );
    assert_eq!(
        src.current("inbox", "sub/new file").await?.map(|i| i.size),
        Some(5)
    );

    // A directory moved in whole is told as a directory (to be walked).
    let outside = dir.path().join("staging");
    std::fs::create_dir_all(outside.join("deep"))?;
    std::fs::write(outside.join("deep/f"), b"x")?;
    std::fs::rename(&outside, root.join("moved"))?;
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Directory("moved/".into())
    );

    // A removal.
    std::fs::remove_file(root.join("sub/new file"))?;
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Removed("sub/new file".into())
    );

    // More events than the channel holds: the rest are dropped and a rescan is asked for.
    let mut small = src.watch(2)?;
    for i in 0..20 {
        std::fs::write(root.join(format!("burst-{i}")), b"b")?;
    }
    let mut seen = Vec::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Room again: the next event brings the rescan first.
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(100), small.events.recv()).await
    {
        seen.push(e);
    }
    std::fs::write(root.join("after-burst"), b"a")?;
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(500), small.events.recv()).await
    {
        seen.push(e);
    }
    assert!(seen.contains(&WatchEvent::Rescan), "{seen:?}");
    Ok(())
}

/// The distinct events that come within `quiet` of each other, in the order first seen
/// (events may repeat); none, an empty list.
async fn events_until_quiet(
    w: &mut backbeat::source::file::FileWatch,
    quiet: Duration,
) -> Vec<WatchEvent> {
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, w.events.recv()).await {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    seen
}

/// The distinct events told, once each of `expected` was (or 5 s passed) and then nothing
/// more for 200 ms.
async fn events_told(
    w: &mut backbeat::source::file::FileWatch,
    expected: &[WatchEvent],
) -> Vec<WatchEvent> {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while !expected.iter().all(|e| seen.contains(e)) {
        match tokio::time::timeout_at(until, w.events.recv()).await {
            Ok(Some(e)) if !seen.contains(&e) => seen.push(e),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    for e in events_until_quiet(w, Duration::from_millis(200)).await {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    seen
}

/// Held by the tests that watch, so that one of them can count the watch threads.
static WATCHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == name)
        })
        .count()
}

/// Waits up to 5 s for `n` threads named `name` (a thread names itself once it runs).
async fn wait_for_threads(name: &str, n: usize) -> usize {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while threads_named(name) != n && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    threads_named(name)
}

#[tokio::test]
async fn the_watch_follows_directories_created_moved_and_moved_out_and_not_links(
) -> anyhow::Result<()> {
    let _alone = WATCHING.lock().await;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir_all(root.join("old/deep"))?;
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir_all(&outside)?;
    std::os::unix::fs::symlink(&outside, root.join("link"))?;
    std::fs::write(root.join("old/deep/f"), b"1")?;
    let threads = threads_named("backbeat-watch");
    let src = FileSource::new(&root)?;
    let mut watch = src.watch(256)?;
    assert_eq!(
        wait_for_threads("backbeat-watch", threads + 1).await,
        threads + 1
    );

    // Reading a file, as a copy does, is not an event.
    assert_eq!(std::fs::read(root.join("old/deep/f"))?, b"1");
    assert_eq!(
        events_until_quiet(&mut watch, Duration::from_millis(200)).await,
        []
    );

    // A directory made after the start is watched: what is written in it is told.
    std::fs::create_dir_all(root.join("new/sub"))?;
    let made = events_told(&mut watch, &[WatchEvent::Directory("new/".into())]).await;
    assert!(
        made.contains(&WatchEvent::Directory("new/".into())),
        "{made:?}"
    );
    std::fs::write(root.join("new/sub/g"), b"2")?;
    let written = [WatchEvent::Written("new/sub/g".into())];
    assert_eq!(events_told(&mut watch, &written).await, written);

    // A directory moved within the tree is told under its new name, and so is what is
    // written in it afterwards.
    std::fs::rename(root.join("old"), root.join("renamed"))?;
    let moved = [
        WatchEvent::DirectoryGone("old/".into()),
        WatchEvent::Directory("renamed/".into()),
    ];
    assert_eq!(events_told(&mut watch, &moved).await, moved);
    std::fs::write(root.join("renamed/deep/h"), b"3")?;
    let written = [WatchEvent::Written("renamed/deep/h".into())];
    assert_eq!(events_told(&mut watch, &written).await, written);

    // A directory moved out is no longer watched.
    std::fs::rename(root.join("renamed"), outside.join("gone"))?;
    let out = [WatchEvent::DirectoryGone("renamed/".into())];
    assert_eq!(events_told(&mut watch, &out).await, out);
    std::fs::write(outside.join("gone/deep/i"), b"4")?;
    // Nor is a link followed out of the tree.
    std::fs::write(root.join("link/j"), b"5")?;
    assert_eq!(
        events_until_quiet(&mut watch, Duration::from_millis(300)).await,
        []
    );

    // Dropping the watch ends its thread.
    drop(watch);
    assert_eq!(wait_for_threads("backbeat-watch", threads).await, threads);

    // The watched directory removed: a rescan is asked for, and the watch ends.
    let mut watch = src.watch(16)?;
    std::fs::remove_dir_all(&root)?;
    let last = events_told(&mut watch, &[WatchEvent::Rescan]).await;
    assert_eq!(last.last(), Some(&WatchEvent::Rescan), "{last:?}");
    assert!(watch.events.recv().await.is_none(), "the watch still runs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_asked_together_each_get_their_own_file() -> anyhow::Result<()> {
    let dir = tree()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir_all(root.join("many"))?;
    for i in 0..120 {
        // Sizes on both sides of one read chunk (256 KiB): read whole, or streamed.
        let len = if i % 10 == 0 { 300 * 1024 + i } else { 10 + i };
        let body: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
        std::fs::write(root.join(format!("many/{i:03}")), body)?;
    }
    let src = FileSource::new(&root)?;
    let opens = (0..150).map(|i| {
        let src = src.clone();
        async move {
            // Keys 120..150 do not exist.
            let key = format!("many/{i:03}");
            let opened = src.open_current("inbox", &key, i % 3 == 0).await?;
            let got = match opened {
                Some((info, Some(body))) => Some((info, collect(body).await?)),
                Some((info, None)) => Some((info, Vec::new())),
                None => None,
            };
            anyhow::Ok((i, key, got))
        }
    });
    let handles: Vec<_> = opens.map(tokio::spawn).collect();
    for h in handles {
        let (i, key, got) = h.await??;
        match got {
            None => assert!(i >= 120, "{key} not found"),
            Some((info, bytes)) => {
                assert!(i < 120, "{key} found");
                assert_eq!(info.version.key, key);
                assert_eq!(bytes, std::fs::read(root.join(&key))?, "{key}");
                assert_eq!(info.size, bytes.len() as u64);
                if i % 3 == 0 {
                    let md5 = backbeat::checksum::hex(&backbeat::checksum::md5(&bytes));
                    assert_eq!(info.content_md5.as_deref(), Some(md5.as_str()), "{key}");
                }
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_directory_scan_summarises_its_entries_without_holding_them() -> anyhow::Result<()> {
    let dir = tree()?;
    let root = dir.path().join("inbox");
    let src = FileSource::new(&root)?;
    let first = src.scan_dir("a/", u64::MAX, None)?.unwrap();
    assert_eq!(first.subdirs, vec!["a/b/".to_string()]);
    assert_eq!(
        src.scan_dir("a/", u64::MAX, None)?.unwrap().summary,
        first.summary
    );
    // A touched file changes the summary; a file in a subdirectory does not.
    std::fs::write(root.join("a/b/c.txt"), b"abcd")?;
    assert_eq!(
        src.scan_dir("a/", u64::MAX, None)?.unwrap().summary,
        first.summary
    );
    std::fs::write(root.join("a/one"), b"11")?;
    assert_ne!(
        src.scan_dir("a/", u64::MAX, None)?.unwrap().summary,
        first.summary
    );
    assert!(src.scan_dir("missing/", u64::MAX, None)?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_directory_stamp_moves_with_its_entries_not_with_in_place_writes() -> anyhow::Result<()> {
    let _alone = WATCHING.lock().await;
    let dir = tree()?;
    let root = dir.path().join("inbox");
    let src = FileSource::new(&root)?;
    let first = src.dir_stamp("a/")?.unwrap();
    // Timestamps are coarse: let the clock move past the directory's last change.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(root.join("a/one"), b"rewritten in place")?;
    assert_eq!(src.dir_stamp("a/")?.unwrap(), first);
    std::fs::write(root.join("a/new"), b"added")?;
    let added = src.dir_stamp("a/")?.unwrap();
    assert_ne!(added, first);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::remove_file(root.join("a/new"))?;
    assert_ne!(src.dir_stamp("a/")?.unwrap(), added);
    assert_eq!(src.subdirs("a/")?.unwrap(), vec!["a/b/".to_string()]);
    assert!(src.dir_stamp("missing/")?.is_none());
    assert!(src.subdirs("a/one/")?.is_none());
    // Not watched: no generation; watched: one, which a lost event changes.
    assert_eq!(src.watch_generation(), None);
    let w = src.watch(16)?;
    let g = src.watch_generation().unwrap();
    src.watch_missed();
    assert_ne!(src.watch_generation(), Some(g));
    assert!(src.watch_generation().is_some());
    drop(w);
    assert_eq!(src.watch_generation(), None);
    Ok(())
}

#[tokio::test]
async fn many_keys_are_looked_up_together_each_as_current_tells_it() -> anyhow::Result<()> {
    let dir = tree()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir_all(root.join("many"))?;
    for i in 0..150 {
        std::fs::write(root.join(format!("many/{i:03}")), format!("file {i}"))?;
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("top"), root.join("link"))?;
    let src = FileSource::new(&root)?;
    // More keys than one blocking call takes, with files, missing keys, a directory, a link
    // and a key that cannot name a file, in an order of their own.
    let mut keys: Vec<String> = (0..150).rev().map(|i| format!("many/{i:03}")).collect();
    for (at, k) in [
        (0, "gone"),
        (70, "a"),
        (71, "link"),
        (140, "../top"),
        (149, "top"),
    ] {
        keys.insert(at, k.to_string());
    }
    let found = src.current_many("inbox", &keys).await;
    assert_eq!(found.len(), keys.len());
    for (k, f) in keys.iter().zip(found) {
        let one = src.current("inbox", k).await?;
        assert_eq!(f?, one, "{k}");
        let present = k.starts_with("many/") || k == "top";
        assert_eq!(one.is_some(), present, "{k}");
    }
    // Another bucket: every key is refused.
    let other = src.current_many("elsewhere", &keys[..3]).await;
    assert_eq!(other.len(), 3);
    assert!(other
        .iter()
        .all(|r| matches!(r, Err(SourceError::NotFound(_)))));
    Ok(())
}
