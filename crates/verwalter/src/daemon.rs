//! The `verwalter` daemon: binds its sockets, loads its state and runs every task until
//! shutdown.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::domain::MachineId;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cantal::{self, PeerTable, QuorumRule};
use crate::control::ControlService;
use crate::election::runner::{self, PacketCounters, Status, Wiring};
use crate::election::transport::{Faults, FaultyTransport, UdpTransport};
use crate::election::{Election, Local, Timing};
use crate::node::{self, Channels, Node, Settings};
use crate::storage::Storage;
use crate::{deployment, http};

/// Everything the daemon is started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub settings: Settings,
    pub host: IpAddr,
    pub machine_id: Option<MachineId>,
    pub strict_majority: bool,
    pub minority_grace: Duration,
    pub socket: PathBuf,
    pub api_token_file: PathBuf,
}

/// Why the daemon stopped; [`DaemonError::exit_code`] is the documented code.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config dir {path} is unreadable")]
    ConfigDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("api token file {path}")]
    Token { path: PathBuf, source: io::Error },
    #[error("no machine id: {0}")]
    MachineId(String),
    #[error("bind {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Socket(#[from] protocol::unix::SocketError),
    #[error("internal task {task} died")]
    TaskDied { task: &'static str, code: u8 },
}

impl DaemonError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::ConfigDir { .. } => 3,
            Self::TaskDied { code, .. } => *code,
            _ => 1,
        }
    }
}

/// Reads the write token, creating it (0600, 32 random bytes as hex) when missing.
pub fn load_token(path: &Path) -> Result<String, DaemonError> {
    let err = |source| DaemonError::Token {
        path: path.to_owned(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
        Err(_) => {}
    }
    let mut random = [0; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(err)?;
    let token = hex::encode(random);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(format!("{token}\n").as_bytes())
        .map_err(err)?;
    file.set_permissions(Permissions::from_mode(0o600))
        .map_err(err)?;
    tracing::info!(path = %path.display(), "created api token");
    Ok(token)
}

/// `--override-machine-id`, else cantal's, else `/etc/machine-id`.
async fn machine_id(options: &Options) -> Result<MachineId, DaemonError> {
    if let Some(id) = options.machine_id {
        return Ok(id);
    }
    if let Some(id) = cantal::machine_id(&options.settings.cantal_socket).await {
        return Ok(id);
    }
    let text = fs::read_to_string("/etc/machine-id")
        .map_err(|e| DaemonError::MachineId(format!("/etc/machine-id: {e}")))?;
    text.trim()
        .parse()
        .map_err(|e: protocol::domain::ParseMachineIdError| DaemonError::MachineId(e.to_string()))
}

/// With the `test-faults` feature, `VERWALTER_TEST_FAULTS` (e.g. `drop=0.2`) makes the
/// election socket lose datagrams; without it, or in a build without the feature, none.
fn test_faults() -> Faults {
    if !cfg!(feature = "test-faults") {
        return Faults::default();
    }
    let Ok(spec) = std::env::var("VERWALTER_TEST_FAULTS") else {
        return Faults::default();
    };
    match Faults::parse(&spec) {
        Ok(faults) => {
            tracing::warn!(
                spec,
                "the election socket runs through the test fault layer"
            );
            faults
        }
        Err(err) => {
            tracing::error!(error = %err, "ignoring VERWALTER_TEST_FAULTS");
            Faults::default()
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let settings = options.settings.clone();
    fs::read_dir(&settings.config_dir).map_err(|source| DaemonError::ConfigDir {
        path: settings.config_dir.clone(),
        source,
    })?;
    let storage = Storage::open(&settings.storage_dir)?;
    let token = load_token(&options.api_token_file)?;
    let id = machine_id(&options).await?;
    let addr = SocketAddr::new(options.host, settings.port);
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(|source| DaemonError::Bind { addr, source })?;
    let control_socket = protocol::unix::bind(&options.socket).await?;
    tracing::info!(%id, %addr, name = %settings.name, hostname = %settings.hostname, "verwalter starting");

    let rule = QuorumRule {
        strict_majority: options.strict_majority,
        minority_grace: options.minority_grace,
        port: settings.port,
        force_leader: settings.debug_force_leader,
    };
    let table = Arc::new(Mutex::new(PeerTable::new()));
    let (view_tx, view_rx) = watch::channel(cantal::lock(&table).view(&rule, Instant::now()));
    let (epoch, voted) = storage.load_election();
    let (status_tx, status_rx) = watch::channel(Status::initial(epoch));
    let (local_tx, local_rx) = watch::channel(Local::default());
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let ping_now = Arc::new(Notify::new());
    let counters = Arc::new(PacketCounters::default());
    let node = Arc::new(Node::new(
        id,
        settings,
        storage.clone(),
        Some(token),
        Channels {
            election: status_rx,
            view: view_rx.clone(),
            local: local_tx,
            ping_now: Arc::clone(&ping_now),
            counters: Arc::clone(&counters),
            peers: Arc::clone(&table),
        },
    ));
    let seed = u64::from_le_bytes(id.as_bytes()[..8].try_into().unwrap_or_default())
        ^ crate::now_ms(std::time::SystemTime::now());
    let election = Election::new(id, epoch, voted, Timing::default(), seed, Instant::now());
    let persist_storage = storage.clone();
    let wiring = Wiring {
        view: view_rx,
        local: local_rx,
        ping_now,
        status: status_tx,
        reports: reports_tx,
        persist: Box::new(move |epoch, voted| {
            if let Err(err) = persist_storage.save_election(epoch, voted) {
                tracing::error!(error = %err, "cannot persist the election epoch");
            }
        }),
        counters,
        shutdown: shutdown.clone(),
    };

    let mut tasks: JoinSet<&'static str> = JoinSet::new();
    let token = shutdown.clone();
    let socket = node.settings.cantal_socket.clone();
    tasks.spawn(async move {
        cantal::follow_peers(socket, table, rule, view_tx, token).await;
        "cantal"
    });
    tasks.spawn(async move {
        let transport = FaultyTransport::new(UdpTransport::new(udp), test_faults(), seed);
        runner::run(election, transport, wiring).await;
        "election"
    });
    let (n, token) = (Arc::clone(&node), shutdown.clone());
    tasks.spawn(async move {
        node::handle_reports(n, reports_rx, token).await;
        "reports"
    });
    let (n, token) = (Arc::clone(&node), shutdown.clone());
    tasks.spawn(async move {
        node::scheduler_loop(n, token).await;
        "scheduler"
    });
    let (n, token) = (Arc::clone(&node), shutdown.clone());
    tasks.spawn(async move {
        node::follower_loop(n, token).await;
        "fetch"
    });
    let (n, token) = (Arc::clone(&node), shutdown.clone());
    tasks.spawn(async move {
        deployment::deploy_loop(n, token).await;
        "deploy"
    });
    let (n, token) = (Arc::clone(&node), shutdown.clone());
    tasks.spawn(async move {
        node::watch_config(n, token).await;
        "config"
    });
    let (n, token) = (Arc::clone(&node), shutdown.clone());
    tasks.spawn(async move {
        if let Err(err) = http::serve(n, tcp, token).await {
            tracing::error!(error = %err, "http server failed");
        }
        "http"
    });
    let (n, token) = (Arc::clone(&node), shutdown.clone());
    tasks.spawn(async move {
        let service = protocol::pb::verwalter::control_server::ControlServer::new(
            ControlService::new(n, token.clone()),
        );
        let router = tonic::transport::Server::builder().add_service(service);
        if let Err(err) = protocol::unix::serve(router, control_socket, token).await {
            tracing::error!(error = %err, "control socket failed");
        }
        "control"
    });

    let died = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        finished = tasks.join_next() => finished.map(|result| result.unwrap_or("a task (panicked)")),
    };
    // A task that ended because a stop was asked for has not died.
    let died = died.filter(|_| !shutdown.is_cancelled());
    shutdown.cancel();
    // Every task ends on the token; give them a moment to finish open work.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    match died {
        None => Ok(()),
        Some(task) => {
            let code = match task {
                "cantal" | "election" | "reports" => 81,
                "http" | "control" => 82,
                _ => 83,
            };
            Err(DaemonError::TaskDied { task, code })
        }
    }
}
