//! The HTTP routes and the request counters behind them.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use libcantal::{Collection, Counter};
use tokio_util::sync::CancellationToken;

use crate::Identity;

/// Request counters, published as `{"metric": "requests.number", "path": P}` (cantal's
/// `/metrics` shows them as `cantal_app_requests_number_total{appname="demo",path="/",...}`).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub root: Counter,
    pub health: Counter,
    pub not_found: Counter,
}

impl Counters {
    /// The collection to hand to `libcantal::start`.
    pub fn collection(&self) -> Result<Collection, libcantal::Error> {
        let mut collection = Collection::new();
        collection.add(r#"{"metric": "requests.number", "path": "/"}"#, &self.root)?;
        collection.add(
            r#"{"metric": "requests.number", "path": "/health"}"#,
            &self.health,
        )?;
        collection.add(
            r#"{"metric": "requests.number", "path": "other"}"#,
            &self.not_found,
        )?;
        Ok(collection)
    }
}

#[derive(Debug)]
struct Shared {
    identity: Identity,
    counters: Counters,
}

/// `GET /` (the greeting), `GET /health` (`ok`); anything else is 404.
pub fn router(identity: Identity, counters: Counters) -> Router {
    let shared = Arc::new(Shared { identity, counters });
    Router::new()
        .route("/", get(greeting))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(shared)
}

async fn greeting(State(shared): State<Arc<Shared>>) -> String {
    shared.counters.root.incr(1);
    shared.identity.greeting()
}

async fn health(State(shared): State<Arc<Shared>>) -> &'static str {
    shared.counters.health.incr(1);
    "ok\n"
}

async fn not_found(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    shared.counters.not_found.incr(1);
    (StatusCode::NOT_FOUND, "not found\n")
}

/// A listening socket on `addr` with `SO_REUSEPORT`: every instance of the demo entry on a
/// host binds the same address and port and the kernel spreads connections over them.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_path(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn routes_answer_and_count() {
        let identity = Identity {
            version: "v1".into(),
            host: "alpha".into(),
        };
        let counters = Counters::default();
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router(identity, counters.clone()),
            shutdown.clone(),
        ));

        let root = get_path(addr, "/").await;
        assert!(root.starts_with("HTTP/1.1 200"), "{root}");
        assert!(root.ends_with("demo-web v1 on alpha\n"), "{root}");
        let health = get_path(addr, "/health").await;
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        let missing = get_path(addr, "/nope").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        get_path(addr, "/").await;

        assert_eq!(counters.root.get(), 2);
        assert_eq!(counters.health.get(), 1);
        assert_eq!(counters.not_found.get(), 1);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn collection_names_are_unique_json() {
        Counters::default().collection().unwrap();
    }
}
