//! A small HTTP client: the agent's fan-out to peers and the `cantal` command's calls to the
//! agent.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A failed request, naming the URL.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: bad request")]
    Build {
        url: String,
        source: hyper::http::Error,
    },
    #[error("{url}")]
    Send {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: reading the reply")]
    Body { url: String, source: hyper::Error },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// An HTTP/1 client with a timeout per request.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn get(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.send(Method::GET, url, None, Bytes::new(), timeout)
            .await
    }

    /// Posts `body` with `content_type`.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.send(Method::POST, url, Some(content_type), body.into(), timeout)
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|source| ClientError::Build {
                url: url.to_owned(),
                source,
            })?;
        let exchange = async {
            let response =
                self.inner
                    .request(request)
                    .await
                    .map_err(|source| ClientError::Send {
                        url: url.to_owned(),
                        source,
                    })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|source| ClientError::Body {
                    url: url.to_owned(),
                    source,
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.to_owned(),
                timeout,
            })?
    }
}
