//! Checksums computed while streaming (DESIGN section 3, "Integrity end to end"): a stream
//! wrapper that hashes every chunk it passes on (MD5, what S3 ETags and Azure's Content-MD5
//! are made of) and counts the bytes, so a copy knows the MD5 of exactly what it sent without
//! reading or holding the object twice (or only counts them, when the source already gave
//! their MD5: [`hashed_unless_known`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use md5::{Digest, Md5};
use parking_lot::Mutex;

use crate::model::ByteStream;

/// The MD5 and length of a streamed body, once it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digested {
    /// MD5 of the bytes.
    pub md5: [u8; 16],
    /// Number of bytes.
    pub len: u64,
}

impl Digested {
    /// The MD5 as lowercase hex (an S3 ETag of a single-part object).
    pub fn hex(&self) -> String {
        hex(&self.md5)
    }

    /// The MD5 as base64 (the `Content-MD5` header, Azure's `Content-MD5`).
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.md5)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The 16 bytes of an MD5 written as 32 hex digits (an ETag without quotes), if it is one.
pub fn md5_of_hex(s: &str) -> Option<[u8; 16]> {
    let s = s.trim().trim_matches('"');
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The 16 bytes of an MD5 in base64 (a `Content-MD5` value), if it is one.
pub fn md5_of_base64(s: &str) -> Option<[u8; 16]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    bytes.try_into().ok()
}

/// MD5 of `data`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// Reads `body` to its end, holding one chunk at a time: its MD5 and length.
///
/// # Errors
/// The stream's error.
pub async fn digest_stream(mut body: ByteStream) -> std::io::Result<Digested> {
    use futures_util::StreamExt as _;
    let mut h = Md5::new();
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        h.update(&chunk);
    }
    Ok(Digested {
        md5: h.finalize().into(),
        len,
    })
}

/// The S3 ETag of a multipart object whose parts have these MD5s: the MD5 of their
/// concatenation, `-<number of parts>`.
pub fn multipart_etag(parts: &[[u8; 16]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let d: [u8; 16] = h.finalize().into();
    format!("{}-{}", hex(&d), parts.len())
}

#[derive(Default)]
struct State {
    md5: Md5,
    len: u64,
    failed: bool,
    /// The body's MD5, known before it was read: not computed again.
    known: Option<[u8; 16]>,
}

/// Where the result of a [`hashed`] stream appears.
#[derive(Clone)]
pub struct Digest5 {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Digest5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digest5")
            .field("done", &self.get())
            .finish()
    }
}

impl Digest5 {
    /// The MD5 and length of what passed so far (a body of known length is not read past its
    /// last byte: compare `len` with it); `None` after an error.
    pub fn get(&self) -> Option<Digested> {
        let s = self.state.lock();
        if s.failed {
            return None;
        }
        let md5: [u8; 16] = match s.known {
            Some(md5) => md5,
            None => s.md5.clone().finalize().into(),
        };
        Some(Digested { md5, len: s.len })
    }
}

struct Hashed {
    inner: ByteStream,
    state: Arc<Mutex<State>>,
}

impl Stream for Hashed {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.as_mut().poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => {
                let mut s = self.state.lock();
                if s.known.is_none() {
                    s.md5.update(chunk);
                }
                s.len += chunk.len() as u64;
            }
            Poll::Ready(Some(Err(_))) => self.state.lock().failed = true,
            _ => {}
        }
        next
    }
}

/// Wraps `body` so the MD5 and length of what was read of it are known.
pub fn hashed(body: ByteStream) -> (ByteStream, Digest5) {
    hashed_unless_known(body, None)
}

/// [`hashed`], except that when the MD5 of `body` is already `known` (the source's digest of
/// these very bytes) it is not computed again: the stream only counts, and [`Digest5::get`]
/// reports `known` with the length that passed. What a site answers compared with it then
/// checks the site's bytes against the source's, which is what hashing again would check,
/// one MD5 fewer.
pub fn hashed_unless_known(body: ByteStream, known: Option<[u8; 16]>) -> (ByteStream, Digest5) {
    let state = Arc::new(Mutex::new(State {
        known,
        ..State::default()
    }));
    let stream = Hashed {
        inner: body,
        state: state.clone(),
    };
    (Box::pin(stream), Digest5 { state })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_hashed_stream_knows_its_md5_at_the_end() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let (mut s, d) = hashed(Box::pin(futures_util::stream::iter(chunks)));
        assert_eq!(d.get().map(|d| d.len), Some(0));
        while s.next().await.is_some() {}
        let got = d.get().unwrap();
        assert_eq!(got.len, 11);
        assert_eq!(got.hex(), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(got.base64(), "XrY7u+Ae7tCTyyK7j1rNww==");
        assert_eq!(
            md5_of_hex("\"5eb63bbbe01eeed093cb22bb8f5acdc3\""),
            Some(got.md5)
        );
        assert_eq!(md5_of_base64("XrY7u+Ae7tCTyyK7j1rNww=="), Some(got.md5));
        assert_eq!(md5_of_hex("abc-2"), None);
    }

    #[tokio::test]
    async fn a_known_md5_is_reported_not_recomputed_and_the_length_still_counted() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let known = md5(b"something else");
        let (mut s, d) =
            hashed_unless_known(Box::pin(futures_util::stream::iter(chunks)), Some(known));
        while s.next().await.is_some() {}
        let got = d.get().unwrap();
        assert_eq!(got.len, 11);
        assert_eq!(got.md5, known);
        // Unknown: computed.
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from_static(b"ab"))];
        let (mut s, d) = hashed_unless_known(Box::pin(futures_util::stream::iter(chunks)), None);
        while s.next().await.is_some() {}
        assert_eq!(d.get().unwrap().md5, md5(b"ab"));
    }

    #[test]
    fn multipart_etags_are_s3s() {
        // Two parts: "a" and "b".
        let e = multipart_etag(&[md5(b"a"), md5(b"b")]);
        assert!(e.ends_with("-2"), "{e}");
        assert_eq!(e.len(), 34);
    }
}
