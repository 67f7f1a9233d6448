//! Application metrics for cantal: counters, levels and states that an application updates in
//! memory and `cantal-agent` reads from a pair of files.
//!
//! ```no_run
//! use libcantal::{Collection, Counter, Integer};
//!
//! let requests = Counter::new();
//! let queue = Integer::new();
//! let mut collection = Collection::new();
//! collection.add(r#"{"metric": "requests.number"}"#, &requests)?;
//! collection.add(r#"{"metric": "queue.size"}"#, &queue)?;
//! // Writes `$CANTAL_PATH.meta` and `$CANTAL_PATH.values`; removed when `_active` drops.
//! let _active = libcantal::start(&collection)?;
//! requests.incr(1);
//! queue.set(17);
//! # Ok::<(), libcantal::Error>(())
//! ```
//!
//! The file format is the one cantal-py writes ([`format`] documents it and parses it; the
//! agent and the `cantal` command use the same parser). Values live in private memory and a
//! background thread copies them into the values file every [`FLUSH_INTERVAL`]; see
//! `docs/cantal.md` for why this crate does not map the file.

#![forbid(unsafe_code)]

mod collection;
pub mod format;
mod metrics;

pub use collection::{ActiveCollection, Collection, Error, FLUSH_INTERVAL, fallback_path, start};
pub use metrics::{Counter, Float, Integer, Metric, State};
