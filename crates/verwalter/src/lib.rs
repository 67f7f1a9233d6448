//! verwalter: leader election over cantal's peers, the Lua scheduler, schedule propagation,
//! rendering of templates into config files, and the HTTP API.
//!
//! Sans-I/O parts (election, vars, schedule hashing, render.yaml) are plain modules; the
//! daemon glues them to sockets, files and processes.

#![forbid(unsafe_code)]

pub mod actions;
pub mod apply;
pub mod cantal;
pub mod config;
pub mod control;
pub mod daemon;
pub mod deploy_log;
pub mod deployment;
pub mod election;
pub mod fetch;
pub mod http;
pub mod id_hex;
pub mod node;
pub mod propagation;
pub mod recipe;
pub mod renderer;
pub mod schedule;
pub mod scheduler;
pub mod storage;
pub mod ui;
pub mod vars;

/// Version the daemon passes to the renderer (`verwalter_version`), checked by it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn now_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
