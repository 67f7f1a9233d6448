//! What vagga writes to a person versus to a CI log. Spinners and colours appear only when
//! someone is watching: stderr is a terminal, `TERM` is not `dumb` and no CI system says
//! otherwise through `CI` (some CI runners give jobs a pseudo-terminal). Build output is
//! always stored and echoed as plain text, so logs read the same everywhere.

use std::io::IsTerminal;

/// Whether stderr may carry spinners and colour codes.
pub fn is_interactive() -> bool {
    interactive(
        std::io::stderr().is_terminal(),
        std::env::var_os("TERM").as_deref(),
        std::env::var_os("CI").as_deref(),
    )
}

fn interactive(
    stderr_is_terminal: bool,
    term: Option<&std::ffi::OsStr>,
    ci: Option<&std::ffi::OsStr>,
) -> bool {
    let dumb = term.is_some_and(|t| t == "dumb");
    // CI systems set CI=true (GitHub, GitLab, Travis) or CI=1; CI=false is an opt-out.
    let in_ci = ci.is_some_and(|v| !v.is_empty() && v != "false" && v != "0");
    stderr_is_terminal && !dumb && !in_ci
}

/// One line of a program's output as plain text: colour and cursor sequences removed, a
/// line redrawn with `\r` (a progress meter) reduced to what a terminal finally showed, and
/// other control characters but tabs dropped. Invalid UTF-8 is replaced, not fatal.
pub fn plain_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\n', '\r']);
    let shown = text.rsplit('\r').next().unwrap_or_default();
    ::console::strip_ansi_codes(shown)
        .chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn interactive_only_on_a_terminal_outside_ci() {
        let xterm = Some(OsStr::new("xterm"));
        assert!(interactive(true, xterm, None));
        assert!(!interactive(false, xterm, None));
        assert!(!interactive(true, Some(OsStr::new("dumb")), None));
        assert!(!interactive(true, xterm, Some(OsStr::new("true"))));
        assert!(!interactive(true, xterm, Some(OsStr::new("1"))));
        assert!(interactive(true, xterm, Some(OsStr::new("false"))));
        assert!(interactive(true, xterm, Some(OsStr::new(""))));
    }

    #[test]
    fn plain_lines() {
        assert_eq!(plain_line(b"plain\n"), "plain");
        assert_eq!(plain_line(b"dos line\r\n"), "dos line");
        assert_eq!(plain_line(b" 10%\r 55%\r100% done\n"), "100% done");
        assert_eq!(
            plain_line(b"\x1b[1;32mgreen\x1b[0m and\ttab"),
            "green and\ttab"
        );
        assert_eq!(plain_line(b"\x1b[2K\rredrawn"), "redrawn");
        assert_eq!(
            plain_line(b"bell\x07 and \xff byte"),
            "bell and \u{fffd} byte"
        );
    }
}
