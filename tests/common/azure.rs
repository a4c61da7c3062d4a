//! Raw Azure Blob calls for tests, signed by `object_store`'s authorizer (independent of the
//! site under test).

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
