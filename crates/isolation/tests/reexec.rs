//! A fatal signal re-executes the image with the same pid.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

const TEST: &str = "abort_reexecutes_the_image_with_the_same_pid";

#[test]
fn abort_reexecutes_the_image_with_the_same_pid() {
    if let Some(marker) = std::env::var_os("REEXEC_MARKER").map(PathBuf::from) {
        // Running as the subprocess: the first image records its pid and aborts; the
        // re-executed image finds the record and reports.
        if let Ok(first_pid) = fs::read_to_string(&marker) {
            println!("first {first_pid} second {}", std::process::id());
            return;
        }
        fs::write(&marker, std::process::id().to_string()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let args: Vec<_> = std::env::args_os().collect();
        isolation::reexec::reexec_on_fatal_signals(&exe, &args).unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env("REEXEC_MARKER", dir.path().join("pid"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest prints the test name on the same line before the report.
    let report = stdout
        .split_once("first ")
        .map(|(_, rest)| rest.lines().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("no report from the second image: {stdout}"));
    let words: Vec<_> = report.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{report}");
    assert_eq!(words[0], words[2], "same pid across the re-exec: {report}");
}
