//! S3 helpers for tests against moto: a client, bucket creation, puts, listings, reads, raw
//! calls.

use backbeat::http::{Body, Xml};
use backbeat::s3::{S3Client, S3Options, S3Request};
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::Method;

use super::peers::Peer;

/// A path-style client for `peer` with throwaway credentials.
pub fn client(peer: &Peer) -> S3Client {
    client_with(peer, "AKIDTEST", "secret")
}

/// A path-style client for `peer` with the given credentials.
pub fn client_with(peer: &Peer, ak: &str, sk: &str) -> S3Client {
    S3Client::new(&peer.url(), "us-east-1", ak, sk, S3Options::default()).expect("client")
}

/// Creates `bucket`, versioned or not.
pub async fn create_bucket(c: &S3Client, bucket: &str, versioned: bool) -> anyhow::Result<()> {
    c.send(S3Request::new(Method::PUT, bucket, None)).await?;
    if versioned {
        let xml = "<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>";
        c.send(
            S3Request::new(Method::PUT, bucket, None)
                .flag("versioning")
                .body(Body::Bytes(xml.into())),
        )
        .await?;
    }
    Ok(())
}

/// Puts a small object; returns its version id (`null` when unversioned).
pub async fn put(
    c: &S3Client,
    bucket: &str,
    key: &str,
    data: &[u8],
    extra: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut req =
        S3Request::new(Method::PUT, bucket, Some(key)).body(Body::Bytes(data.to_vec().into()));
    for (k, v) in extra {
        req = req.header(k.parse()?, HeaderValue::from_str(v)?);
    }
    Ok(version_id_of(&c.send(req).await?))
}

/// Deletes `key` without a version id: in a versioned bucket this writes a delete marker, whose
/// version id is returned.
pub async fn delete(c: &S3Client, bucket: &str, key: &str) -> anyhow::Result<String> {
    let resp = c
        .send(S3Request::new(Method::DELETE, bucket, Some(key)))
        .await?;
    Ok(version_id_of(&resp))
}

/// The `x-amz-version-id` of an answer (`null` when absent).
fn version_id_of<B>(resp: &hyper::Response<B>) -> String {
    resp.headers()
        .get("x-amz-version-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("null")
        .to_string()
}

/// All keys of `bucket` as moto's ListObjectsV2 gives them (url-decoded when encoded).
pub async fn list_keys(c: &S3Client, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = S3Request::new(Method::GET, bucket, None)
            .query("list-type", "2")
            .query("prefix", prefix);
        if let Some(t) = &token {
            req = req.query("continuation-token", t.clone());
        }
        let (_, xml) = c.send_xml(req).await?;
        let url = xml.text_of("EncodingType") == Some("url");
        for o in xml.all("Contents") {
            let k = o.text_of("Key").unwrap_or_default();
            keys.push(if url {
                backbeat::http::uri_decode(k).unwrap_or_default()
            } else {
                k.to_string()
            });
        }
        match xml.text_of("NextContinuationToken") {
            Some(t) if xml.text_of("IsTruncated") == Some("true") => token = Some(t.to_string()),
            _ => return Ok(keys),
        }
    }
}

/// The bytes of the current version of `key` in `bucket`.
pub async fn get_bytes(c: &S3Client, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    let resp = c
        .send(S3Request::new(Method::GET, bucket, Some(key)))
        .await?;
    Ok(resp.into_body().collect().await?.to_bytes().to_vec())
}

/// Parses an XML answer of a GET on `bucket?<flag>`.
pub async fn get_xml(
    c: &S3Client,
    bucket: &str,
    key: Option<&str>,
    flag: &str,
) -> anyhow::Result<Xml> {
    let (_, xml) = c
        .send_xml(S3Request::new(Method::GET, bucket, key).flag(flag))
        .await?;
    Ok(xml)
}
