//! lithos: the production container supervisor.
//!
//! `lithos_tree` reads the configs and runs one `lithos_knot` per instance; each knot starts
//! its container with `isolation`. The other binaries check, switch, show, run commands and
//! clean images. See docs/lithos.md.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cgroups;
pub mod check;
pub mod clean;
pub mod command;
pub mod config;
pub mod control;
pub mod instance;
pub mod knot;
pub mod logging;
pub mod metrics;
pub mod ps;
pub mod sockets;
pub mod state;
pub mod switch;
pub mod tree;
pub mod units;
pub mod watcher;
pub mod yaml;
