//! Raw Azure Blob calls for tests, signed by `object_store`'s authorizer (independent of the
//! site under test), and the few reads built on them: create a container, list its blobs, get
//! a blob's bytes.

use backbeat::http::Xml;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use object_store::azure::{AzureAccessKey, AzureAuthorizer, AzureCredential};
use object_store::client::HttpRequestBody;

/// Sends a signed request; returns status, headers and body.
pub async fn call(
    account: &str,
    key: &str,
    method: Method,
    url: &str,
    body: &[u8],
) -> anyhow::Result<(u16, HeaderMap, Bytes)> {
    let cred = AzureCredential::AccessKey(AzureAccessKey::try_new(key)?);
    let mut twin = Request::builder()
        .method(method)
        .uri(url)
        .body(HttpRequestBody::from(Bytes::new()))?;
    if !body.is_empty() || twin.method() == Method::PUT {
        twin.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    AzureAuthorizer::new(&cred, account).try_authorize(&mut twin)?;
    let (parts, _) = twin.into_parts();
    let req = Request::from_parts(parts, Full::new(Bytes::copy_from_slice(body)));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, bytes))
}

/// Creates the container `name` at `endpoint` (`http://host:port/<account>`); one that exists
/// already is fine.
pub async fn create_container(
    account: &str,
    key: &str,
    endpoint: &str,
    name: &str,
) -> anyhow::Result<()> {
    let url = format!("{endpoint}/{name}?restype=container");
    let (status, _, body) = call(account, key, Method::PUT, &url, b"").await?;
    anyhow::ensure!(
        status == 201 || status == 409,
        "create container {name}: {status} {body:?}"
    );
    Ok(())
}

/// Names of every blob of the container at `container_url` (`<endpoint>/<container>`), all
/// pages of List Blobs.
pub async fn list_blobs(
    account: &str,
    key: &str,
    container_url: &str,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut marker = String::new();
    loop {
        let mut url = format!("{container_url}?restype=container&comp=list");
        if !marker.is_empty() {
            url.push_str("&marker=");
            url.push_str(&backbeat::http::uri_encode(&marker));
        }
        let (status, _, body) = call(account, key, Method::GET, &url, b"").await?;
        anyhow::ensure!(status == 200, "list blobs: {status} {body:?}");
        let xml = Xml::parse(&body).map_err(anyhow::Error::msg)?;
        if let Some(blobs) = xml.child("Blobs") {
            names.extend(
                blobs
                    .all("Blob")
                    .filter_map(|b| b.text_of("Name"))
                    .map(str::to_string),
            );
        }
        match xml.text_of("NextMarker") {
            Some(m) if !m.is_empty() => marker = m.to_string(),
            _ => return Ok(names),
        }
    }
}

/// The bytes of the blob `name` of the container at `container_url`; `None` when it does not
/// exist.
pub async fn get_blob(
    account: &str,
    key: &str,
    container_url: &str,
    name: &str,
) -> anyhow::Result<Option<Bytes>> {
    let url = format!("{container_url}/{}", backbeat::http::encode_key(name));
    let (status, _, body) = call(account, key, Method::GET, &url, b"").await?;
    match status {
        200 => Ok(Some(body)),
        404 => Ok(None),
        _ => anyhow::bail!("get blob {name}: {status} {body:?}"),
    }
}
