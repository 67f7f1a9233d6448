//! The HTTP API on `--host:--port` (axum).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::exposition::{Exposition, Kind};
use crate::gossip::peers::{PeerEntry, state_name};
use crate::processes::ProcessInfo;
use crate::promql::{self, BadData};
use crate::query;
use crate::state::{AgentState, SelfReport};

/// Peers answer fan-out queries within this, or are listed in `warnings`.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);

type Shared = Arc<AgentState>;

/// The API's routes.
pub fn router(state: Shared) -> Router {
    let prom = |endpoint: PromEndpoint, cluster: bool| {
        move |State(state): State<Shared>, Form(params): Form<Vec<(String, String)>>| async move {
            prometheus_api(state, endpoint, params, cluster, None).await
        }
    };
    let label_values = |cluster: bool| {
        move |State(state): State<Shared>,
              Path(name): Path<String>,
              Form(params): Form<Vec<(String, String)>>| async move {
            prometheus_api(
                state,
                PromEndpoint::LabelValues,
                params,
                cluster,
                Some(name),
            )
            .await
        }
    };
    let mut router = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/status.json", get(status))
        .route("/all_processes.json", get(all_processes))
        .route("/all_sockets.json", get(all_sockets))
        .route("/all_peers.json", get(all_peers))
        .route("/peers_with_remote.json", get(peers_with_remote))
        .route("/add_host.json", post(add_host))
        .route("/all_metrics.json", get(all_metrics_json))
        .route("/all_metrics.cbor", get(all_metrics_cbor))
        .route("/metrics", get(metrics))
        .route("/query.json", post(query_json))
        .route("/query.cbor", post(query_cbor))
        .route("/remote/query_by_host.json", post(query_by_host));
    for (prefix, cluster) in [("/api/v1", false), ("/cluster/api/v1", true)] {
        for (path, endpoint) in [
            ("query", PromEndpoint::Query),
            ("query_range", PromEndpoint::QueryRange),
            ("series", PromEndpoint::Series),
            ("labels", PromEndpoint::Labels),
        ] {
            router = router.route(
                &format!("{prefix}/{path}"),
                get(prom(endpoint, cluster)).post(prom(endpoint, cluster)),
            );
        }
        router = router.route(
            &format!("{prefix}/label/{{name}}/values"),
            get(label_values(cluster)).post(label_values(cluster)),
        );
    }
    router.fallback(not_found).with_state(state)
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "not found"})),
    )
        .into_response()
}

async fn healthz(State(state): State<Shared>) -> Response {
    if state.ready() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn status(State(state): State<Shared>) -> axum::Json<Json> {
    axum::Json(state.status_json())
}

async fn all_processes(State(state): State<Shared>) -> axum::Json<Json> {
    let latest = Arc::clone(&state.metrics().latest);
    let all: Vec<&ProcessInfo> = latest.processes.iter().map(|p| &p.info).collect();
    axum::Json(json!({"boot_time": latest.boot_time_ms, "all": all}))
}

async fn all_sockets(State(state): State<Shared>) -> axum::Json<Json> {
    let latest = Arc::clone(&state.metrics().latest);
    axum::Json(json!(latest.sockets))
}

fn peers_json(state: &AgentState, keep: impl Fn(&PeerEntry) -> bool) -> Json {
    let peers: Vec<Json> = state.membership.peers.with(|t| {
        t.entries()
            .filter(|e| keep(e))
            .map(PeerEntry::to_json)
            .collect()
    });
    json!({ "peers": peers })
}

async fn all_peers(State(state): State<Shared>) -> axum::Json<Json> {
    axum::Json(peers_json(&state, |_| true))
}

async fn peers_with_remote(State(state): State<Shared>) -> axum::Json<Json> {
    // Every agent answers remote queries, so every alive peer qualifies.
    axum::Json(peers_json(&state, |e| {
        e.state == protocol::domain::PeerState::Alive
    }))
}

fn add_host_error(status: StatusCode, error: String) -> Response {
    (status, axum::Json(json!({"ok": false, "error": error}))).into_response()
}

async fn add_host(State(state): State<Shared>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AddHost {
        addr: String,
    }
    let request: AddHost = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return add_host_error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
    };
    let addr: SocketAddr = match request.addr.parse() {
        Ok(addr) => addr,
        Err(_) => {
            return add_host_error(
                StatusCode::BAD_REQUEST,
                format!("{:?} is not an ip:port address", request.addr),
            );
        }
    };
    match state.membership.join(addr) {
        Ok(()) => axum::Json(json!({"ok": true})).into_response(),
        Err(_) => add_host_error(
            StatusCode::BAD_REQUEST,
            "gossip is off: the agent runs without --cluster-name".to_owned(),
        ),
    }
}

fn all_metrics(state: &AgentState) -> Json {
    let latest = Arc::clone(&state.metrics().latest);
    let rows: Vec<Json> = latest
        .samples()
        .map(|(key, value)| json!([key.fields, latest.timestamp_ms, value]))
        .collect();
    json!({ "metrics": rows })
}

async fn all_metrics_json(State(state): State<Shared>) -> axum::Json<Json> {
    axum::Json(all_metrics(&state))
}

fn cbor_response(value: &Json) -> Response {
    let mut body = Vec::new();
    match ciborium::into_writer(value, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/cbor")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn all_metrics_cbor(State(state): State<Shared>) -> Response {
    cbor_response(&all_metrics(&state))
}

async fn metrics(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let mut exposition = Exposition::new();
    let latest = {
        let metrics = state.metrics();
        let history = &metrics.history;
        exposition.add(
            "cantal_agent_history_series",
            Kind::Gauge,
            "series kept in history",
            Default::default(),
            history.num_series() as f64,
        );
        exposition.add(
            "cantal_agent_history_bytes",
            Kind::Gauge,
            "bytes of encoded history",
            Default::default(),
            history.encoded_bytes() as f64,
        );
        exposition.add(
            "cantal_agent_scans",
            Kind::Counter,
            "scans since start",
            Default::default(),
            metrics.scans as f64,
        );
        Arc::clone(&metrics.latest)
    };
    exposition.add_samples(latest.samples(), state.info.prometheus_per_pid);
    add_agent_metrics(&state, &latest, &mut exposition);
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            exposition.to_openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            exposition.to_text(),
        )
            .into_response()
    }
}

fn add_agent_metrics(state: &AgentState, latest: &crate::scanner::Scan, out: &mut Exposition) {
    let none = BTreeMap::new;
    let one = |name: &str, value: &str| BTreeMap::from([(name.to_owned(), value.to_owned())]);
    out.add(
        "cantal_agent_scan_duration_seconds",
        Kind::Gauge,
        "duration of the last scan",
        none(),
        latest.duration.as_secs_f64(),
    );
    out.add(
        "cantal_agent_process_sweep_duration_seconds",
        Kind::Gauge,
        "duration of the last scan's per-process sweep (part of the scan)",
        none(),
        latest.sweep_duration.as_secs_f64(),
    );
    out.add(
        "cantal_agent_processes",
        Kind::Gauge,
        "processes seen by the last scan",
        none(),
        latest.processes.len() as f64,
    );
    out.add(
        "cantal_agent_app_files",
        Kind::Gauge,
        "application metric files read by the last scan",
        none(),
        latest.app_files as f64,
    );
    let uptime = now_ms().saturating_sub(state.info.startup_time_ms) as f64 / 1000.0;
    out.add(
        "cantal_agent_uptime_seconds",
        Kind::Gauge,
        "time since the agent started",
        none(),
        uptime,
    );
    let me = SelfReport::read();
    out.add(
        "cantal_agent_cpu_seconds",
        Kind::Counter,
        "CPU time used by the agent",
        none(),
        me.cpu_seconds,
    );
    out.add(
        "cantal_agent_rss_bytes",
        Kind::Gauge,
        "resident memory of the agent",
        none(),
        me.rss_bytes as f64,
    );
    out.add(
        "cantal_agent_pss_bytes",
        Kind::Gauge,
        "proportional memory of the agent",
        none(),
        me.pss_bytes as f64,
    );
    let (alive, suspect, dead) = state.membership.peers.with(|t| t.counts());
    for (name, count) in [("alive", alive), ("suspect", suspect), ("dead", dead)] {
        out.add(
            "cantal_agent_peers",
            Kind::Gauge,
            "peers by failure-detection state",
            one("state", name),
            count as f64,
        );
    }
    for (kind, count) in state.membership.bad_packets() {
        out.add(
            "cantal_agent_bad_packets",
            Kind::Counter,
            "gossip datagrams dropped, by reason",
            one("kind", kind),
            count as f64,
        );
    }
    if let Some(storage) = state.storage_report() {
        out.add(
            "cantal_agent_storage_bytes",
            Kind::Gauge,
            "size of the last history file written",
            none(),
            storage.size as f64,
        );
        out.add(
            "cantal_agent_storage_timestamp_seconds",
            Kind::Gauge,
            "when the history file was last written",
            none(),
            storage.timestamp_ms as f64 / 1000.0,
        );
    }
}

fn bad_request(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error.to_string()})),
    )
        .into_response()
}

fn run_query(state: &AgentState, request: &query::Request) -> Json {
    json!({"dataset": query::run(request, &state.metrics().history)})
}

async fn query_json(State(state): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<query::Request>(&body) {
        Ok(request) => axum::Json(run_query(&state, &request)).into_response(),
        Err(e) => bad_request(e),
    }
}

async fn query_cbor(State(state): State<Shared>, body: Bytes) -> Response {
    match ciborium::from_reader::<query::Request, _>(body.as_ref()) {
        Ok(request) => cbor_response(&run_query(&state, &request)),
        Err(e) => bad_request(e),
    }
}

/// The `/query.json` rules on this host and every alive peer: one dataset per host id.
pub async fn query_cluster(state: &Shared, body: Bytes) -> Result<Json, String> {
    let request: query::Request = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut hosts = serde_json::Map::new();
    hosts.insert(
        state.info.id.to_string(),
        json!({"hostname": state.info.hostname, "name": state.info.name, "dataset": run_query(state, &request)["dataset"]}),
    );
    let mut warnings = Vec::new();
    let mut calls = JoinSet::new();
    for (peer, url) in state.alive_peers() {
        let client = state.client.clone();
        let body = body.clone();
        calls.spawn(async move {
            let answer = client
                .post(
                    &format!("{url}/query.json"),
                    "application/json",
                    body,
                    PEER_TIMEOUT,
                )
                .await;
            (peer, answer)
        });
    }
    while let Some(Ok((peer, answer))) = calls.join_next().await {
        let label = peer_label(&peer);
        match answer
            .map_err(|e| e.to_string())
            .and_then(|(status, body)| {
                if status.is_success() {
                    serde_json::from_slice::<Json>(&body).map_err(|e| e.to_string())
                } else {
                    Err(format!("status {status}"))
                }
            }) {
            Ok(reply) => {
                let info = peer.info.as_ref();
                hosts.insert(
                    peer.id().to_string(),
                    json!({"hostname": info.map(|i| &i.hostname), "name": info.map(|i| &i.name), "dataset": reply["dataset"]}),
                );
            }
            Err(e) => warnings.push(format!("{label}: {e}")),
        }
    }
    Ok(json!({"hosts": hosts, "warnings": warnings}))
}

async fn query_by_host(State(state): State<Shared>, body: Bytes) -> Response {
    match query_cluster(&state, body).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => bad_request(e),
    }
}

/// The `host` label of a peer's series: its node name, else hostname, else id.
fn peer_label(peer: &PeerEntry) -> String {
    peer.info
        .as_ref()
        .map(|i| {
            if i.name.is_empty() {
                i.hostname.clone()
            } else {
                i.name.clone()
            }
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| peer.id().to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PromEndpoint {
    Query,
    QueryRange,
    Series,
    Labels,
    LabelValues,
}

impl PromEndpoint {
    fn path(self, label: Option<&str>) -> String {
        match self {
            Self::Query => "query".to_owned(),
            Self::QueryRange => "query_range".to_owned(),
            Self::Series => "series".to_owned(),
            Self::Labels => "labels".to_owned(),
            Self::LabelValues => {
                format!("label/{}/values", percent_encode(label.unwrap_or_default()))
            }
        }
    }
}

fn prom_error(error: &BadData) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"status": "error", "errorType": "bad_data", "error": error.0})),
    )
        .into_response()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Prometheus time: unix seconds (fractions allowed) or RFC 3339.
fn parse_time(text: &str) -> Result<u64, BadData> {
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Ok((seconds * 1000.0) as u64);
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .ok_or_else(|| BadData(format!("bad time {text:?}")))
}

fn format_sample(t_ms: u64, value: f64) -> Json {
    let text = if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    };
    json!([t_ms as f64 / 1000.0, text])
}

/// Answers one Prometheus API call on this host: the `data` member.
fn prometheus_local(
    state: &AgentState,
    endpoint: PromEndpoint,
    params: &[(String, String)],
    label: Option<&str>,
) -> Result<Json, BadData> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let required =
        |name: &str| param(name).ok_or_else(|| BadData(format!("missing parameter {name}")));
    let metrics = state.metrics();
    let history = &metrics.history;
    match endpoint {
        PromEndpoint::Query => {
            let expr = promql::parse(required("query")?)?;
            let time = param("time")
                .map(parse_time)
                .transpose()?
                .unwrap_or_else(now_ms);
            let (t, value) = promql::evaluate(&expr, history, &[time])
                .pop()
                .expect("one time in, one value out");
            Ok(match value {
                promql::Value::Scalar(v) => {
                    json!({"resultType": "scalar", "result": format_sample(t, v)})
                }
                promql::Value::Vector(items) => json!({
                    "resultType": "vector",
                    "result": items.into_iter().map(|(labels, v)| json!({"metric": labels, "value": format_sample(t, v)})).collect::<Vec<_>>(),
                }),
            })
        }
        PromEndpoint::QueryRange => {
            let expr = promql::parse(required("query")?)?;
            let start = parse_time(required("start")?)?;
            let end = parse_time(required("end")?)?;
            let step = promql::parse_duration(required("step")?)?;
            let step_ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
            if step_ms == 0 || end < start {
                return Err(BadData(
                    "step must be positive and end not before start".to_owned(),
                ));
            }
            if (end - start) / step_ms >= promql::MAX_POINTS {
                return Err(BadData(format!(
                    "more than {} points per series; raise step",
                    promql::MAX_POINTS
                )));
            }
            let times: Vec<u64> = (0..=(end - start) / step_ms)
                .map(|i| start + i * step_ms)
                .collect();
            let mut matrix: BTreeMap<promql::Labels, Vec<Json>> = BTreeMap::new();
            for (t, value) in promql::evaluate(&expr, history, &times) {
                match value {
                    promql::Value::Scalar(v) => matrix
                        .entry(promql::Labels::new())
                        .or_default()
                        .push(format_sample(t, v)),
                    promql::Value::Vector(items) => {
                        for (labels, v) in items {
                            matrix.entry(labels).or_default().push(format_sample(t, v));
                        }
                    }
                }
            }
            Ok(json!({
                "resultType": "matrix",
                "result": matrix.into_iter().map(|(labels, values)| json!({"metric": labels, "values": values})).collect::<Vec<_>>(),
            }))
        }
        PromEndpoint::Series => {
            let selectors = params
                .iter()
                .filter(|(n, _)| n == "match[]")
                .map(|(_, v)| promql::parse_selector(v))
                .collect::<Result<Vec<_>, _>>()?;
            if selectors.is_empty() {
                return Err(BadData("no match[] parameter".to_owned()));
            }
            Ok(json!(promql::series(history, &selectors)))
        }
        PromEndpoint::Labels => Ok(json!(promql::label_names(history))),
        PromEndpoint::LabelValues => Ok(json!(promql::label_values(
            history,
            label.unwrap_or_default()
        ))),
    }
}

async fn prometheus_api(
    state: Shared,
    endpoint: PromEndpoint,
    params: Vec<(String, String)>,
    cluster: bool,
    label: Option<String>,
) -> Response {
    let local = match prometheus_local(&state, endpoint, &params, label.as_deref()) {
        Ok(data) => data,
        Err(e) => return prom_error(&e),
    };
    if !cluster {
        return axum::Json(json!({"status": "success", "data": local})).into_response();
    }
    let query: String = params
        .iter()
        .map(|(n, v)| format!("{}={}", percent_encode(n), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let path = endpoint.path(label.as_deref());
    let mut calls = JoinSet::new();
    for (peer, url) in state.alive_peers() {
        let client = state.client.clone();
        let url = format!("{url}/api/v1/{path}?{query}");
        calls.spawn(async move { (peer_label(&peer), client.get(&url, PEER_TIMEOUT).await) });
    }
    let mut answers = vec![(state.info.name.clone(), local)];
    let mut warnings = Vec::new();
    while let Some(Ok((host, answer))) = calls.join_next().await {
        let data = answer
            .map_err(|e| e.to_string())
            .and_then(|(status, body)| {
                let reply: Json = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                if status.is_success() && reply["status"] == "success" {
                    Ok(reply["data"].clone())
                } else {
                    Err(reply["error"]
                        .as_str()
                        .map_or_else(|| format!("status {status}"), str::to_owned))
                }
            });
        match data {
            Ok(data) => answers.push((host, data)),
            Err(e) => warnings.push(format!("host {host} did not answer: {e}")),
        }
    }
    // Stable output whatever order the peers answered in.
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    let data = merge(endpoint, label.as_deref(), answers);
    let mut reply = json!({"status": "success", "data": data});
    if !warnings.is_empty() {
        reply["warnings"] = json!(warnings);
    }
    axum::Json(reply).into_response()
}

/// Merges per-host `data`: series get a `host` label; name lists are united.
fn merge(endpoint: PromEndpoint, label: Option<&str>, answers: Vec<(String, Json)>) -> Json {
    let with_host = |mut labels: Json, host: &str| {
        if let Some(map) = labels.as_object_mut() {
            map.entry("host").or_insert_with(|| json!(host));
        }
        labels
    };
    match endpoint {
        PromEndpoint::Query | PromEndpoint::QueryRange => {
            let result_type = answers
                .first()
                .map(|(_, d)| d["resultType"].clone())
                .unwrap_or(json!("vector"));
            if result_type == "scalar" {
                return answers
                    .into_iter()
                    .next()
                    .map(|(_, d)| d)
                    .unwrap_or(Json::Null);
            }
            let mut result = Vec::new();
            for (host, data) in answers {
                for mut item in data["result"].as_array().cloned().unwrap_or_default() {
                    item["metric"] = with_host(item["metric"].take(), &host);
                    result.push(item);
                }
            }
            json!({"resultType": result_type, "result": result})
        }
        PromEndpoint::Series => json!(
            answers
                .into_iter()
                .flat_map(|(host, data)| {
                    data.as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |labels| with_host(labels, &host))
                })
                .collect::<Vec<_>>()
        ),
        PromEndpoint::Labels | PromEndpoint::LabelValues => {
            let mut names: BTreeSet<String> = BTreeSet::new();
            let hosts: Vec<String> = answers.iter().map(|(h, _)| h.clone()).collect();
            for (_, data) in answers {
                names.extend(
                    data.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned)),
                );
            }
            match (endpoint, label) {
                (PromEndpoint::Labels, _) => {
                    names.insert("host".to_owned());
                }
                (_, Some("host")) => names.extend(hosts),
                _ => {}
            }
            json!(names)
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status_page(State(state): State<Shared>) -> Html<String> {
    let latest = Arc::clone(&state.metrics().latest);
    let uptime = Duration::from_secs(now_ms().saturating_sub(state.info.startup_time_ms) / 1000);
    let mut peers = String::new();
    state.membership.peers.with(|t| {
        for e in t.entries() {
            let info = e.info.as_ref();
            peers.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>\n",
                escape_html(info.map_or("", |i| i.name.as_str())),
                escape_html(info.map_or("", |i| i.hostname.as_str())),
                e.node.addr,
                state_name(e.state),
                state_name(e.state),
                e.stats
                    .last_roundtrip
                    .map_or_else(String::new, |(_, _, rtt)| format!(
                        "{:.1} ms",
                        rtt.as_secs_f64() * 1000.0
                    )),
            ));
        }
    });
    let mut groups: Vec<(String, f64, f64)> = Vec::new();
    let mut by_group: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (key, value) in latest.samples() {
        if key.source != crate::metric::Source::Group {
            continue;
        }
        let name = key.fields.get("group").unwrap_or_default().to_owned();
        let entry = by_group.entry(name).or_default();
        match key.metric() {
            "rss" => entry.1 = value.as_f64().unwrap_or(0.0),
            "user_cpu" | "system_cpu" => entry.0 += value.as_f64().unwrap_or(0.0),
            _ => {}
        }
    }
    groups.extend(
        by_group
            .into_iter()
            .map(|(name, (cpu, rss))| (name, cpu, rss)),
    );
    groups.sort_by(|a, b| b.2.total_cmp(&a.2));
    let ticks = procfs::ticks_per_second().max(1) as f64;
    let group_rows: String = groups
        .iter()
        .take(20)
        .map(|(name, cpu, rss)| {
            format!(
                "<tr><td>{}</td><td>{:.1} s</td><td>{:.1} MiB</td></tr>\n",
                escape_html(name),
                cpu / ticks,
                rss / 1048576.0
            )
        })
        .collect();
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>cantal: {host}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px}}.alive{{color:green}}.suspect{{color:orange}}.dead{{color:red}}</style>\
         </head><body>\n<h1>cantal on {host}</h1>\n<p>Node {name}, cluster {cluster}, up {uptime}, last scan {scan} ms, {procs} processes.</p>\n\
         <h2>Peers</h2>\n<table><tr><th>name</th><th>hostname</th><th>address</th><th>state</th><th>rtt</th></tr>\n{peers}</table>\n\
         <h2>Top groups by memory</h2>\n<table><tr><th>group</th><th>cpu</th><th>rss</th></tr>\n{group_rows}</table>\n\
         <p><a href=\"/metrics\">/metrics</a> <a href=\"/status.json\">/status.json</a> <a href=\"/all_peers.json\">/all_peers.json</a></p>\n</body></html>\n",
        host = escape_html(&state.info.hostname),
        name = escape_html(&state.info.name),
        cluster = escape_html(state.info.cluster_name.as_deref().unwrap_or("(gossip off)")),
        uptime = humantime::format_duration(uptime),
        scan = latest.duration.as_millis(),
        procs = latest.processes.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_add_host_labels() {
        let answers = vec![
            (
                "a".to_owned(),
                json!({"resultType": "vector", "result": [{"metric": {"x": "1"}, "value": [1, "2"]}]}),
            ),
            (
                "b".to_owned(),
                json!({"resultType": "vector", "result": [{"metric": {"host": "kept"}, "value": [1, "3"]}]}),
            ),
        ];
        let merged = merge(PromEndpoint::Query, None, answers);
        assert_eq!(
            merged["result"][0]["metric"],
            json!({"x": "1", "host": "a"})
        );
        assert_eq!(merged["result"][1]["metric"], json!({"host": "kept"}));
        let labels = merge(
            PromEndpoint::LabelValues,
            Some("host"),
            vec![("a".to_owned(), json!([])), ("b".to_owned(), json!(["c"]))],
        );
        assert_eq!(labels, json!(["a", "b", "c"]));
    }

    #[test]
    fn times_and_encoding() {
        assert_eq!(parse_time("1700000000.5").unwrap(), 1_700_000_000_500);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(percent_encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
        assert_eq!(format_sample(1500, 2.0), json!([1.5, "2"]));
    }
}
