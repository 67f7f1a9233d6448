//! HTTP requests to other verwalters: schedules and pending actions, and the leader's pushes
//! of new schedules (keep-alive, 3 s timeout).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;

use crate::schedule::{Schedule, Stamp};

const TIMEOUT: Duration = Duration::from_secs(3);

/// What `GET /v1/schedule` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct ScheduleReply {
    #[serde(flatten)]
    pub schedule: Schedule,
    #[serde(default)]
    pub pending_actions: BTreeMap<String, Value>,
    #[serde(default)]
    pub frozen: bool,
}

/// A fetch that failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {message}")]
    Request { url: String, message: String },
    #[error("GET {url}: timed out after {TIMEOUT:?}")]
    Timeout { url: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: {message}")]
    Body { url: String, message: String },
    #[error("schedule from {url}: hash does not match its data")]
    BadHash { url: String },
    #[error("POST {url}: {message}")]
    Push { url: String, message: String },
}

/// A keep-alive HTTP client.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, url: String) -> Result<T, FetchError> {
        let uri: hyper::Uri =
            url.parse()
                .map_err(|err: hyper::http::uri::InvalidUri| FetchError::Request {
                    url: url.clone(),
                    message: err.to_string(),
                })?;
        let request = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|err| FetchError::Request {
                    url: url.clone(),
                    message: err.to_string(),
                })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| FetchError::Body {
                    url: url.clone(),
                    message: err.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(FetchError::Status {
                    url: url.clone(),
                    status: status.as_u16(),
                });
            }
            serde_json::from_slice(&body).map_err(|err| FetchError::Body {
                url: url.clone(),
                message: err.to_string(),
            })
        };
        tokio::time::timeout(TIMEOUT, request)
            .await
            .map_err(|_| FetchError::Timeout { url: url.clone() })?
    }

    /// The schedule in force at `addr`, checked against its hash.
    pub async fn schedule(&self, addr: SocketAddr) -> Result<ScheduleReply, FetchError> {
        let url = format!("http://{addr}/v1/schedule");
        let reply: ScheduleReply = self.get_json(url.clone()).await?;
        if !reply.schedule.is_consistent() {
            return Err(FetchError::BadHash { url });
        }
        Ok(reply)
    }

    /// Sends a new schedule (the body of `GET /v1/schedule`) to the follower at `addr`.
    pub async fn push_schedule(&self, addr: SocketAddr, body: Bytes) -> Result<(), FetchError> {
        let url = format!("http://{addr}/v1/push_schedule");
        let failed = |message: String| FetchError::Push {
            url: url.clone(),
            message,
        };
        let request = hyper::Request::post(&url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|err| failed(err.to_string()))?;
        let send = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| failed(err.to_string()))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            Err(failed(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            )))
        };
        tokio::time::timeout(TIMEOUT, send)
            .await
            .map_err(|_| failed(format!("timed out after {TIMEOUT:?}")))?
    }

    /// A schedule `addr` held, by its stamp's hash (a merge parent).
    pub async fn schedule_by_hash(
        &self,
        addr: SocketAddr,
        stamp: &Stamp,
    ) -> Result<Schedule, FetchError> {
        let url = format!("http://{addr}/v1/schedule_by_hash/{}", stamp.hash);
        let schedule: Schedule = self.get_json(url.clone()).await?;
        if !schedule.is_consistent() || schedule.stamp.hash != stamp.hash {
            return Err(FetchError::BadHash { url });
        }
        Ok(schedule)
    }

    /// A peer's `machine/` metadata.
    pub async fn machine(&self, addr: SocketAddr) -> Result<Value, FetchError> {
        self.get_json(format!("http://{addr}/v1/machine")).await
    }

    pub async fn pending_actions(
        &self,
        addr: SocketAddr,
    ) -> Result<BTreeMap<String, Value>, FetchError> {
        self.get_json(format!("http://{addr}/v1/pending_actions"))
            .await
    }
}
