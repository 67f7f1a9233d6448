//! demo-web: the small HTTP service that the whole-stack example builds into an image with
//! vagga and deploys through verwalter and lithos (config-examples/demo/).
//!
//! `GET /` answers one line naming the version of the image and the host, `GET /health`
//! answers `ok`; both count requests in libcantal counters that cantal-agent reads from
//! `$CANTAL_PATH.{meta,values}` (lithos sets `CANTAL_PATH` inside the container).

#![forbid(unsafe_code)]

pub mod identity;
pub mod service;

pub use identity::{Identity, IdentityError};
pub use service::{Counters, listen, router, serve};
