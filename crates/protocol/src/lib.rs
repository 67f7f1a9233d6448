//! Wire types and local-socket plumbing shared by lithos, cantal and verwalter.
//!
//! - [`pb`]: code generated from `proto/*.proto` (messages, clients, servers).
//! - [`unix`]: bind, connect and serve gRPC over a unix socket.
//! - [`domain`]: validated Rust types that the tools use instead of raw messages.

#![forbid(unsafe_code)]

pub mod domain;
pub mod pb;
pub mod unix;
