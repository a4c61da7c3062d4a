//! The `file` source on a temporary directory.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use backbeat::model::{ByteStream, VersionRef};
use backbeat::source::file::FileSource;
use backbeat::source::{Source, SourceError, VersionPage};
use futures_util::StreamExt;

/// The version of `key` listed in `page`.
fn version_in(page: &VersionPage, key: &str) -> VersionRef {
    page.versions
        .iter()
        .find(|o| o.version.key == key)
        .unwrap()
        .version
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
async fn bucket_is_the_directory_name_and_listing_pages_cover_every_file_once() -> anyhow::Result<()>
{
    let dir = tree()?;
    let src = FileSource::new(dir.path().join("inbox"))?.with_page_size(2);
    assert_eq!(src.buckets(), vec!["inbox".to_string()]);
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = src.list_versions("inbox", cursor.as_deref()).await?;
        pages += 1;
        assert!(page.versions.len() <= 2);
        keys.extend(page.versions.iter().map(|v| v.version.key.clone()));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
        assert!(pages < 20, "listing does not end");
    }
    assert_eq!(
        keys,
        vec![
            "a/b/c.txt",
            "a/one",
            "a-c",
            "empty",
            "top",
            "z/with space é"
        ]
    );
    let unique: BTreeSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    // Unknown bucket.
    assert!(matches!(
        src.list_versions("other", None).await,
        Err(SourceError::NotFound(_))
    ));
    Ok(())
}

#[tokio::test]
async fn head_and_get_follow_the_current_version() -> anyhow::Result<()> {
    let dir = tree()?;
    let root = dir.path().join("inbox");
    let src = FileSource::new(&root)?;
    let page = src.list_versions("inbox", None).await?;
    let top = page
        .versions
        .iter()
        .find(|v| v.version.key == "top")
        .unwrap()
        .clone();
    assert_eq!(top.size, 9);
    assert!(!top.is_delete_marker);
    assert!(top.last_modified.ends_with('Z'), "{}", top.last_modified);

    let head = src.head(&top.version).await?.expect("current");
    assert_eq!(head, top);
    assert_eq!(
        collect(src.get(&top.version, None).await?).await?,
        b"top level"
    );
    assert_eq!(
        collect(src.get(&top.version, Some((4, 8))).await?).await?,
        b"level"
    );
    assert_eq!(
        collect(src.get(&top.version, Some((0, 0))).await?).await?,
        b"t"
    );
    assert!(matches!(
        src.get(&top.version, Some((4, 9))).await,
        Err(SourceError::Invalid(_))
    ));

    // The version id is stable (restart = a new FileSource).
    let again = FileSource::new(&root)?.head(&top.version).await?;
    assert_eq!(again.map(|o| o.version), Some(top.version.clone()));

    // A changed file is a new version; the old one is gone.
    std::fs::write(root.join("top"), b"top level, changed")?;
    assert_eq!(src.head(&top.version).await?, None);
    assert!(matches!(
        src.get(&top.version, None).await,
        Err(SourceError::NotFound(_))
    ));
    let page = src.list_versions("inbox", None).await?;
    let new_top = page
        .versions
        .iter()
        .find(|v| v.version.key == "top")
        .unwrap();
    assert_ne!(new_top.version.version_id, top.version.version_id);
    assert_eq!(new_top.size, 18);

    // A vanished file.
    std::fs::remove_file(root.join("top"))?;
    assert_eq!(src.head(&new_top.version).await?, None);

    // The empty file streams nothing.
    let empty = page
        .versions
        .iter()
        .find(|v| v.version.key == "empty")
        .unwrap();
    assert_eq!(collect(src.get(&empty.version, None).await?).await?, b"");

    assert_eq!(src.replication_rules("inbox").await?, None);
    Ok(())
}

#[tokio::test]
async fn keys_cannot_reach_outside_the_directory() -> anyhow::Result<()> {
    let dir = tree()?;
    std::fs::write(dir.path().join("secret"), b"secret")?;
    let src = FileSource::new(dir.path().join("inbox"))?;
    for key in ["../secret", "a/../../secret", "/etc/passwd", "", "a//one"] {
        let v = VersionRef::new("inbox", key, "x");
        assert_eq!(src.head(&v).await?, None, "{key:?}");
        assert!(src.get(&v, None).await.is_err(), "{key:?}");
    }
    // A symbolic link to the outside is not an object.
    std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("inbox/link"))?;
    std::os::unix::fs::symlink(dir.path(), dir.path().join("inbox/dirlink"))?;
    let page = src.list_versions("inbox", None).await?;
    assert!(page
        .versions
        .iter()
        .all(|v| !v.version.key.contains("link")));
    Ok(())
}

#[tokio::test]
async fn a_file_changed_while_read_fails_the_stream() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir(&root)?;
    std::fs::write(root.join("f"), vec![1u8; 1024 * 1024])?;
    let src = FileSource::new(&root)?;
    let v = src.list_versions("inbox", None).await?.versions[0]
        .version
        .clone();
    let mut s = src.get(&v, None).await?;
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

#[tokio::test]
async fn the_watch_reports_new_and_changed_files_quickly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("inbox");
    std::fs::create_dir_all(root.join("sub"))?;
    let src = FileSource::new(&root)?;
    let mut watch = src.watch(64)?;
    std::fs::write(root.join("sub/new file"), b"hello")?;
    let deadline = std::time::Duration::from_secs(5);
    let mut seen = BTreeSet::new();
    while !seen.contains("sub/new file") {
        let key = tokio::time::timeout(deadline, watch.changes.recv())
            .await?
            .expect("watch open");
        seen.insert(key);
    }
    // The reported key heads to the file's current version.
    let page = src.list_versions("inbox", None).await?;
    let v = page
        .versions
        .iter()
        .find(|v| v.version.key == "sub/new file")
        .unwrap();
    assert_eq!(src.head(&v.version).await?.map(|i| i.size), Some(5));
    Ok(())
}

#[tokio::test]
async fn open_gives_metadata_and_data_of_the_current_version_only() -> anyhow::Result<()> {
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
    let page = src.list_versions("inbox", None).await?;
    for (key, body) in [
        ("d/small", &small[..]),
        ("large", &large[..]),
        ("empty", &b""[..]),
    ] {
        let v = version_in(&page, key);
        let (info, stream) = src.open(&v).await?.expect("current version opens");
        assert_eq!(info.version, v);
        assert_eq!(info.size, body.len() as u64);
        assert_eq!(info, src.head(&v).await?.unwrap(), "open agrees with head");
        assert_eq!(collect(stream).await?, body, "{key}");
    }

    // A replaced file: the old version is gone, the new one opens.
    let old = version_in(&page, "d/small");
    std::fs::remove_file(root.join("d/small"))?;
    std::fs::write(root.join("d/small"), b"new body, other size")?;
    assert!(src.open(&old).await?.is_none());
    let cur = src.list_versions("inbox", None).await?;
    let new = version_in(&cur, "d/small");
    assert_ne!(new.version_id, old.version_id);
    let (_, s) = src.open(&new).await?.unwrap();
    assert_eq!(collect(s).await?, b"new body, other size");

    // A symbolic link is not an object, even under a real name; other buckets are refused.
    std::os::unix::fs::symlink(root.join("large"), root.join("link"))?;
    let link = VersionRef::new("inbox", "link", "0-0-0");
    assert!(src.open(&link).await?.is_none());
    assert!(src
        .open(&VersionRef::new("inbox", "../x", "0-0-0"))
        .await?
        .is_none());
    assert!(matches!(
        src.open(&VersionRef::new("other", "large", "0-0-0")).await,
        Err(SourceError::NotFound(_))
    ));
    Ok(())
}
