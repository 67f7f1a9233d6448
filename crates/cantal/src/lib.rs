//! cantal-agent: metrics collection, history, gossip membership and the HTTP and gRPC APIs;
//! and the `cantal` command. See `docs/cantal.md`.

#![forbid(unsafe_code)]

pub mod agent;
pub mod app_metrics;
pub mod cli;
pub mod client;
pub mod exposition;
pub mod gossip;
pub mod groups;
pub mod history;
pub mod http;
pub mod log_limit;
pub mod logging;
pub mod metric;
pub mod processes;
pub mod promql;
pub mod query;
pub mod rpc;
pub mod scanner;
pub mod sockets;
pub mod state;
pub mod storage;
pub mod system;
