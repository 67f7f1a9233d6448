//! Shared by the stack's integration tests.

use std::path::PathBuf;

/// The workspace's binary dir (deploy-stack's own, where cargo puts every tool).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deploy-stack"))
        .parent()
        .expect("binary dir")
        .to_path_buf()
}

/// A tool built by the workspace, or a panic saying how to build it.
pub fn tool(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}
