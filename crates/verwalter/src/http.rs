//! The HTTP API (`/v1/...`, spec §2.8) and, for every other GET, the web UI's files
//! (`ui.rs`). Write routes need `Content-Type: application/json` and, when a token is
//! configured, `Authorization: Bearer <token>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::cantal;
use crate::election::State as ElectionState;
use crate::node::{self, Node};
use crate::{propagation, ui, vars};

type Shared = Arc<Node>;

/// Longest `wait_action` wait.
const WAIT_ACTION: Duration = Duration::from_secs(30);
/// How long `POST /v1/action` waits for a majority to hold the action.
const REPLICATION_WAIT: Duration = Duration::from_secs(1);

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    node: Shared,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The sender's address tells a follower whether a pushed schedule comes from its leader.
    let service = app(node).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The router, with `.pretty` handled in front of it.
pub fn app(node: Shared) -> Router {
    let api = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/election", get(election))
        .route("/v1/schedule", get(schedule))
        .route("/v1/push_schedule", post(push_schedule))
        .route("/v1/scheduler_input", get(scheduler_input))
        .route("/v1/scheduler_debug_info", get(scheduler_debug_info))
        .route("/v1/backups", get(backups))
        .route("/v1/backup/{name}", get(backup))
        .route("/v1/schedule_by_hash/{hash}", get(schedule_by_hash))
        .route("/v1/roles_data", get(roles_data))
        .route("/v1/pending_actions", get(pending_actions))
        .route("/v1/machine", get(machine))
        .route("/v1/action_is_pending/{id}", get(action_is_pending))
        .route("/v1/action", post(action))
        .route("/v1/wait_action", post(wait_action))
        .route("/v1/force_render_all", post(force_render_all))
        .route("/v1/rollback", post(rollback))
        .route("/v1/resume", post(resume))
        .route("/v1/plan", get(plan_get).post(plan_post))
        .route("/v1/log/{kind}/{*path}", get(log_file))
        .route("/v1/log_files", get(log_files))
        .fallback(not_found)
        .with_state(node);
    Router::new()
        .fallback_service(api)
        .layer(middleware::from_fn(pretty))
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    Rejection::new(status, text).into_response()
}

/// A refused request: status and JSON body (small, unlike a built `Response`).
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    body: Value,
}

impl Rejection {
    fn new(status: StatusCode, text: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"error": text.into()}),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

fn ok_json(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// The web UI's files; anything else is a JSON 404.
async fn not_found(State(node): State<Shared>, method: Method, uri: Uri) -> Response {
    let readable = method == Method::GET || method == Method::HEAD;
    if readable
        && !uri.path().starts_with("/v1/")
        && let Some(response) = ui::asset(&node.settings.config_dir, uri.path()).await
    {
        return response;
    }
    error(StatusCode::NOT_FOUND, "not found")
}

/// `/v1/x.pretty`: the same answer, indented.
async fn pretty(mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let Some(stripped) = path
        .strip_suffix(".pretty")
        .filter(|p| p.starts_with("/v1/"))
    else {
        return next.run(request).await;
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Ok(uri) = format!("{stripped}{query}").parse() {
        *request.uri_mut() = uri;
    }
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "response body failed");
    };
    let bytes = collected.to_bytes();
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => {
            let text = serde_json::to_string_pretty(&crate::schedule::canonical_value(&value))
                .unwrap_or_default();
            let mut response = Response::from_parts(parts, Body::from(text));
            response.headers_mut().remove(header::CONTENT_LENGTH);
            response
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

/// A write's `Content-Type` must be `application/json` (else 415).
fn require_json_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|mime| mime.trim() == "application/json")
        });
    if !json_type {
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    Ok(())
}

/// Checks a write request: token (401), content type (415), JSON body (400).
fn write_body(node: &Node, headers: &HeaderMap, body: &Bytes) -> Result<Value, Rejection> {
    if let Some(token) = &node.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token (Authorization: Bearer <token>)",
            ));
        }
    }
    require_json_type(headers)?;
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|err| {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid JSON at line {} column {}: {err}",
                err.line(),
                err.column()
            ),
        )
    })
}

/// 503 with the leader's identity, for writes that only the leader takes.
fn require_leader(node: &Node) -> Result<(), Rejection> {
    if node.is_leader() {
        return Ok(());
    }
    let leader = node.election.borrow().leader;
    let info = leader.map(|id| {
        let addr = node.peer_http(&id).map(|addr| addr.to_string());
        let name = cantal::lock(&node.peers)
            .peers
            .get(&id)
            .map(|p| p.name.clone());
        json!({"id": id.to_string(), "name": name, "addr": addr})
    });
    Err(Rejection {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: json!({"error": "not_leader", "leader": info}),
    })
}

fn leader_json(node: &Node) -> Value {
    let status = node.election.borrow().clone();
    let Some(id) = status.leader else {
        return Value::Null;
    };
    if id == node.id {
        return json!({
            "id": id.to_string(),
            "name": node.settings.name,
            "hostname": node.settings.hostname,
            "addr": null,
            "schedule": node.current().map(|s| s.stamp.clone()),
        });
    }
    let addr = node.peer_http(&id).map(|addr| addr.to_string());
    let (name, hostname) = {
        let table = cantal::lock(&node.peers);
        let peer = table.peers.get(&id);
        (
            peer.map(|p| p.name.clone()),
            peer.map(|p| p.hostname.clone()),
        )
    };
    let wanted = node.wanted.borrow().clone();
    json!({
        "id": id.to_string(),
        "name": name,
        "hostname": hostname,
        "addr": addr,
        "schedule": wanted.filter(|(leader, _, _)| *leader == id).and_then(|(_, stamp, _)| stamp),
    })
}

fn schedule_status(node: &Node) -> &'static str {
    let status = node.election.borrow().clone();
    let current = node.current();
    match status.state {
        ElectionState::Unstable | ElectionState::PreCandidate | ElectionState::Electing { .. } => {
            "unstable"
        }
        _ if status.leader.is_none() || current.is_none() => "waiting",
        ElectionState::Leader => "ok",
        _ => {
            let wanted = node.wanted.borrow().clone();
            let leader_hash = wanted
                .and_then(|(_, stamp, _)| stamp)
                .map(|stamp| stamp.hash);
            if leader_hash.is_some() && leader_hash != current.map(|s| s.stamp.hash.clone()) {
                "fetching"
            } else {
                "ok"
            }
        }
    }
}

async fn status(State(node): State<Shared>) -> Response {
    let election = node.election.borrow().clone();
    let (peer_count, peers_timestamp, cantal_error) = {
        let table = cantal::lock(&node.peers);
        (table.peers.len(), table.changed_at, table.error.clone())
    };
    node.set_error("cantal", cantal_error);
    let current = node.current();
    let roles = current.as_ref().map_or(0, |s| {
        vars::node_roles(&s.data, &node.settings.hostname).len()
    });
    let leader = leader_json(&node);
    let state = node.state();
    let mut metrics = node.counters.snapshot();
    if let (Some(metrics), Value::Object(propagation)) =
        (metrics.as_object_mut(), node.propagation.snapshot())
    {
        metrics.extend(propagation);
    }
    metrics["pending_actions"] = json!(state.actions.len());
    let stats = state.scheduler.stats;
    ok_json(json!({
        "version": crate::VERSION,
        "id": node.id.to_string(),
        "name": node.settings.name,
        "hostname": node.settings.hostname,
        "peers": peer_count,
        "peers_timestamp": peers_timestamp,
        "leader": leader,
        "roles": roles,
        "last_stable_timestamp": election.last_stable_timestamp,
        "num_errors": state.errors.len(),
        "errors": state.errors,
        "failed_roles": state.failed_roles,
        "debug_force_leader": node.settings.debug_force_leader,
        "metrics": metrics,
        "fetch_state": state.fetch_state,
        "election_state": election.state,
        "epoch": election.epoch,
        "schedule_id": current.as_ref().map(|s| s.stamp.hash.clone()),
        "schedule_status": schedule_status(&node),
        "default_frontend": node.settings.default_frontend,
        "frozen": state.frozen,
        "scheduler": {
            "last_run": state.scheduler.last_run,
            "duration_ms": u64::try_from(stats.duration.as_millis()).unwrap_or(u64::MAX),
            "instructions": stats.instructions,
            "memory": stats.memory,
            "error": state.scheduler.error,
        },
    }))
}

async fn peers(State(node): State<Shared>) -> Response {
    let table = cantal::lock(&node.peers);
    let state = node.state();
    let list: Vec<Value> = table
        .peers
        .values()
        .map(|peer| {
            let info = state.peer_info.get(&peer.id).cloned().unwrap_or_default();
            json!({
                "id": peer.id.to_string(),
                "primary_addr": peer.primary_addr,
                "name": peer.name,
                "hostname": peer.hostname,
                "known_since": crate::now_ms(peer.known_since),
                "last_report_direct": peer.last_report_direct.map(crate::now_ms),
                "errors": info.errors,
                "state": match peer.state {
                    protocol::domain::PeerState::Alive => "alive",
                    protocol::domain::PeerState::Suspect => "suspect",
                    protocol::domain::PeerState::Dead => "dead",
                },
                "failed_roles": info.failed_roles,
                "schedule": info.schedule,
            })
        })
        .collect();
    ok_json(Value::Array(list))
}

async fn election(State(node): State<Shared>) -> Response {
    let status = node.election.borrow().clone();
    let votes = match status.state {
        ElectionState::Electing { votes, .. } => Some(votes),
        _ => None,
    };
    ok_json(json!({
        "state": status.state,
        "epoch": status.epoch,
        "leader": status.leader.map(|id| id.to_string()),
        "votes": votes,
        "needed": status.needed,
        "followers": status.followers,
        "last_stable_timestamp": status.last_stable_timestamp,
    }))
}

async fn schedule(State(node): State<Shared>) -> Response {
    let Some(current) = node.current() else {
        return error(StatusCode::NOT_FOUND, "no schedule yet");
    };
    ok_json(propagation::reply_body(&node, &current))
}

/// The leader's push of a new schedule (`propagation`): no token, as the hosts do not share
/// one; accepted only from the address of the leader this node follows.
async fn push_schedule(State(node): State<Shared>, request: Request) -> Response {
    let from = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    if let Err(rejection) = require_json_type(request.headers()) {
        return rejection.into_response();
    }
    let Some(from) = from else {
        return error(StatusCode::FORBIDDEN, "sender address unknown");
    };
    let received = match axum::body::to_bytes(request.into_body(), propagation::PUSH_LIMIT).await {
        Ok(body) => propagation::receive(&node, from, &body),
        Err(_) => Err(propagation::PushRejection::TooLarge),
    };
    match received {
        Ok(new) => ok_json(json!({"installed": new})),
        Err(err) => {
            node.propagation
                .push_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(peer = %from, error = %err, "pushed schedule refused; it is fetched after the leader's Ping");
            let status = match err {
                propagation::PushRejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                propagation::PushRejection::BadJson(_)
                | propagation::PushRejection::BadHash { .. } => StatusCode::BAD_REQUEST,
                propagation::PushRejection::Leader => StatusCode::CONFLICT,
                propagation::PushRejection::NotFromLeader { .. } => StatusCode::FORBIDDEN,
            };
            error(status, err.to_string())
        }
    }
}

async fn scheduler_input(State(node): State<Shared>) -> Response {
    match node.state().scheduler.input.clone() {
        Some(input) => ok_json(input),
        None => error(
            StatusCode::NOT_FOUND,
            "the scheduler has not run on this node",
        ),
    }
}

async fn scheduler_debug_info(State(node): State<Shared>) -> Response {
    let state = node.state();
    let run = &state.scheduler;
    let input = run
        .input
        .as_ref()
        .map(|input| serde_json::to_string_pretty(input).unwrap_or_default())
        .unwrap_or_else(|| "(none)".into());
    let text = format!(
        "==== error\n{}\n==== debug log\n{}\n==== input\n{input}\n",
        run.error.as_deref().unwrap_or("(none)"),
        run.debug_log
    );
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn backups(State(node): State<Shared>) -> Response {
    ok_json(serde_json::to_value(node.storage.backups()).unwrap_or(Value::Null))
}

async fn backup(State(node): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    match node.storage.backup(&name) {
        Some(schedule) => ok_json(serde_json::to_value(schedule).unwrap_or(Value::Null)),
        None => error(StatusCode::NOT_FOUND, format!("no backup {name:?}")),
    }
}

/// A schedule this node held, by hash: how a leader fetches the other side's schedule after
/// a partition heals, even when that side already switched to the leader's.
async fn schedule_by_hash(State(node): State<Shared>, UrlPath(hash): UrlPath<String>) -> Response {
    match node.storage.find_by_hash(&hash) {
        Some(schedule) => ok_json(serde_json::to_value(schedule).unwrap_or(Value::Null)),
        None => error(StatusCode::NOT_FOUND, format!("no schedule {hash:?} here")),
    }
}

async fn roles_data(State(node): State<Shared>) -> Response {
    let Some(current) = node.current() else {
        return ok_json(json!({}));
    };
    let data = &current.data;
    // Lock order everywhere: the peer table, then the node state.
    let table = cantal::lock(&node.peers);
    let state = node.state();
    let mut failed_on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for role in &state.failed_roles {
        failed_on
            .entry(role.clone())
            .or_default()
            .push(node.settings.hostname.clone());
    }
    {
        for (id, info) in &state.peer_info {
            let host = table
                .peers
                .get(id)
                .map_or_else(|| id.to_string(), |p| p.hostname.clone());
            for role in &info.failed_roles {
                failed_on
                    .entry(role.clone())
                    .or_default()
                    .push(host.clone());
            }
        }
    }
    let mut roles: BTreeSet<String> = data
        .get("roles")
        .and_then(Value::as_object)
        .map(|roles| roles.keys().cloned().collect())
        .unwrap_or_default();
    let nodes: Vec<String> = data
        .get("nodes")
        .and_then(Value::as_object)
        .map(|nodes| nodes.keys().cloned().collect())
        .unwrap_or_default();
    for host in &nodes {
        roles.extend(vars::node_roles(data, host));
    }
    let mut out = Map::new();
    for role in roles {
        let per_node: Map<String, Value> = nodes
            .iter()
            .filter(|host| vars::node_roles(data, host).contains(&role))
            .map(|host| {
                (
                    host.clone(),
                    Value::Object(vars::role_vars(data, &role, host)),
                )
            })
            .collect();
        out.insert(
            role.clone(),
            json!({
                "nodes": per_node,
                "last_deployment": state.roles.get(&role),
                "failed_on": failed_on.get(&role).cloned().unwrap_or_default(),
                "buttons": data.pointer(&format!("/roles/{role}/buttons")).cloned().unwrap_or(Value::Null),
            }),
        );
    }
    ok_json(Value::Object(out))
}

/// This host's `machine/` metadata, read by the leader for `peers[id].machine`.
async fn machine(State(node): State<Shared>) -> Response {
    ok_json(Value::Object(node.state().inputs.machine.clone()))
}

async fn pending_actions(State(node): State<Shared>) -> Response {
    ok_json(json!(node.state().actions))
}

async fn action_is_pending(State(node): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    ok_json(json!({"pending": node.state().actions.contains_key(&id)}))
}

/// The common start of `action` and `wait_action`: checks, rate limit, registration.
async fn register(
    node: &Shared,
    headers: &HeaderMap,
    body: &Bytes,
    waiter: Option<oneshot::Sender<Option<Value>>>,
) -> Result<(String, crate::election::ActionDigest), Rejection> {
    let action = write_body(node, headers, body)?;
    require_leader(node)?;
    let admitted = node
        .rate
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .admit(tokio::time::Instant::now());
    if !admitted {
        return Err(Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "more than 1000 actions per second",
        ));
    }
    Ok(node.register_action(action, waiter).await)
}

async fn action(State(node): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (id, digest) = match register(&node, &headers, &body, None).await {
        Ok(registered) => registered,
        Err(rejection) => return rejection.into_response(),
    };
    let deadline = tokio::time::Instant::now() + REPLICATION_WAIT;
    let mut replicated = node.replicated(&digest);
    while !replicated && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        replicated = node.replicated(&digest) || !node.state().actions.contains_key(&id);
    }
    ok_json(json!({"registered": id, "replicated": replicated}))
}

async fn wait_action(State(node): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (sender, receiver) = oneshot::channel();
    let id = match register(&node, &headers, &body, Some(sender)).await {
        Ok((id, _)) => id,
        Err(rejection) => return rejection.into_response(),
    };
    match tokio::time::timeout(WAIT_ACTION, receiver).await {
        Ok(Ok(Some(reply))) => ok_json(reply),
        Ok(Ok(None)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node stopped leading before the action ran",
        ),
        Err(_) => {
            node.state().waiters.remove(&id);
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("action {id} not processed within 30 s"),
            )
        }
    }
}

async fn force_render_all(State(node): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(rejection) = write_body(&node, &headers, &body) {
        return rejection.into_response();
    }
    node.render_wake.notify_one();
    ok_json(json!({"ok": true}))
}

async fn rollback(State(node): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match write_body(&node, &headers, &body) {
        Ok(request) => request,
        Err(rejection) => return rejection.into_response(),
    };
    if let Err(rejection) = require_leader(&node) {
        return rejection.into_response();
    }
    let Some(name) = request.get("backup").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be {\"backup\": \"<name>\"}",
        );
    };
    match node::rollback(&node, name).await {
        Some(schedule) => ok_json(json!({"ok": true, "hash": schedule.stamp.hash, "frozen": true})),
        None => error(StatusCode::NOT_FOUND, format!("no backup {name:?}")),
    }
}

async fn resume(State(node): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(rejection) = write_body(&node, &headers, &body) {
        return rejection.into_response();
    }
    if let Err(rejection) = require_leader(&node) {
        return rejection.into_response();
    }
    node.set_frozen(false);
    node.scheduler_wake.notify_one();
    ok_json(json!({"ok": true, "frozen": false}))
}

async fn plan_get(State(node): State<Shared>) -> Response {
    plan(&node, None).await
}

async fn plan_post(State(node): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match write_body(&node, &headers, &body) {
        Ok(action) => plan(&node, Some(action).filter(|a| !a.is_null())).await,
        Err(rejection) => rejection.into_response(),
    }
}

/// Runs the scheduler without publishing and compares per host with the schedule in force.
async fn plan(node: &Node, action: Option<Value>) -> Response {
    if let Err(rejection) = require_leader(node) {
        return rejection.into_response();
    }
    let input = node.scheduler_input(action).await;
    let outcome = match node.run_scheduler(input).await {
        Ok(outcome) => outcome,
        Err(failure) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(
                    json!({"error": failure.error.to_string(), "debug_log": failure.debug_log}),
                ),
            )
                .into_response();
        }
    };
    let current = node
        .current()
        .map(|s| s.data.clone())
        .unwrap_or(Value::Null);
    ok_json(json!({
        "hosts": plan_diff(&current, &outcome.data),
        "schedule": outcome.data,
        "hash": crate::schedule::hash(&outcome.data),
    }))
}

/// Per host: roles added, removed and changed (with the changed vars, old and new).
pub fn plan_diff(old: &Value, new: &Value) -> Value {
    let hosts = |data: &Value| -> BTreeSet<String> {
        data.get("nodes")
            .and_then(Value::as_object)
            .map(|nodes| nodes.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut out = Map::new();
    for host in hosts(old).union(&hosts(new)) {
        let before: BTreeSet<String> = vars::node_roles(old, host).into_iter().collect();
        let after: BTreeSet<String> = vars::node_roles(new, host).into_iter().collect();
        let mut changed = Map::new();
        for role in before.intersection(&after) {
            let a = vars::role_vars(old, role, host);
            let b = vars::role_vars(new, role, host);
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let diff: Map<String, Value> = keys
                .into_iter()
                .filter(|key| a.get(*key) != b.get(*key))
                .map(|key| (key.clone(), json!({"old": a.get(key), "new": b.get(key)})))
                .collect();
            if !diff.is_empty() {
                changed.insert(role.clone(), Value::Object(diff));
            }
        }
        let added: Vec<&String> = after.difference(&before).collect();
        let removed: Vec<&String> = before.difference(&after).collect();
        if !added.is_empty() || !removed.is_empty() || !changed.is_empty() {
            out.insert(
                host.clone(),
                json!({"added": added, "removed": removed, "changed": changed}),
            );
        }
    }
    Value::Object(out)
}

/// The deployment log files that exist, oldest first, so the UI only asks for those:
/// `{"index": [..], "global": [..], "changes": [..], "roles": {"<role>": [..]}}`.
async fn log_files(State(node): State<Shared>) -> Response {
    let dir = node.log.dir().to_owned();
    let listing = tokio::task::spawn_blocking(move || {
        let files = |path: &Path| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect();
            names.sort();
            names
        };
        let mut roles = Map::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with('.') && entry.file_type().is_ok_and(|t| t.is_dir()) {
                roles.insert(name, json!(files(&entry.path())));
            }
        }
        json!({
            "index": files(&dir.join(".index")),
            "global": files(&dir.join(".global")),
            "changes": files(&dir.join(".changes")),
            "roles": roles,
        })
    })
    .await
    .unwrap_or(Value::Null);
    ok_json(listing)
}

/// `/v1/log/{index,global,changes,role,external}/<path>` with `Range` support.
async fn log_file(
    State(node): State<Shared>,
    UrlPath((kind, path)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let relative = Path::new(&path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return error(StatusCode::BAD_REQUEST, "invalid log path");
    }
    let dir = node.log.dir();
    let file: PathBuf = match kind.as_str() {
        "index" => dir.join(".index").join(relative),
        "global" => dir.join(".global").join(relative),
        "changes" => dir.join(".changes").join(relative),
        "role" => dir.join(relative),
        "external" => {
            let mut parts = relative.components();
            let alias = parts
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            let base = alias.and_then(|alias| node.state().inputs.log_dirs.get(&alias).cloned());
            match base {
                Some(base) => base.join(parts.as_path()),
                None => return error(StatusCode::NOT_FOUND, "unknown log alias"),
            }
        }
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    };
    let bytes = match tokio::fs::read(&file).await {
        Ok(bytes) => bytes,
        Err(_) => return error(StatusCode::NOT_FOUND, format!("no log {kind}/{path}")),
    };
    let total = bytes.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_range(value, total));
    let mut response = match range {
        Some((start, end)) => {
            let mut response =
                (StatusCode::PARTIAL_CONTENT, bytes[start..=end].to_vec()).into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response
        }
        None if headers.contains_key(header::RANGE) && total > 0 => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("bytes */{total}"),
            )
                .into_response();
        }
        None => bytes.into_response(),
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` → inclusive byte positions within `total`.
fn parse_range(value: &str, total: usize) -> Option<(usize, usize)> {
    let spec = value.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (start, end) = spec.split_once('-')?;
    let last = total.checked_sub(1)?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: usize = suffix.parse().ok()?;
            (total.saturating_sub(n), last)
        }
        (start, "") => (start.parse().ok()?, last),
        (start, end) => (start.parse().ok()?, end.parse::<usize>().ok()?.min(last)),
    };
    (start <= end && start <= last).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("lines=1-2", 100), None);
    }

    #[test]
    fn plan_lists_changed_roles_per_host() {
        let old = json!({"nodes": {
            "a": {"roles": {"web": {"version": "v1"}, "db": {}}},
            "b": {"roles": {"web": {"version": "v1"}}}
        }});
        let new = json!({"nodes": {
            "a": {"roles": {"web": {"version": "v2"}, "cache": {}}},
            "b": {"roles": {"web": {"version": "v1"}}}
        }});
        let diff = plan_diff(&old, &new);
        assert_eq!(
            diff,
            json!({"a": {
                "added": ["cache"], "removed": ["db"],
                "changed": {"web": {"version": {"old": "v1", "new": "v2"}}}
            }})
        );
    }
}
