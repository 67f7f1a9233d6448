//! deploy-stack: runs the whole stack on one host from the embedded example configs
//! (config-examples/demo/): builds the demo images with vagga, installs them for lithos,
//! starts cantal-agent, lithos_tree and verwalter under one private state directory, waits
//! for verwalter's scheduler to deploy the demo, and stops everything in order on a signal.
//!
//! The stack never links the tools: it runs their binaries (found beside its own) and talks
//! to them over HTTP and files, exactly as an operator would.

#![forbid(unsafe_code)]

pub mod cgroups;
pub mod daemons;
pub mod images;
pub mod layout;
pub mod up;

pub use layout::Layout;
pub use up::{Addresses, Options, StackError, up};
