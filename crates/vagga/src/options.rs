//! `options`: a command's docopt usage text, turned into `VAGGAOPT_*` (raw values) and
//! `VAGGACLI_*` (shell-quoted canonical forms) variables.

use docopt::{Docopt, Value};

/// Parsing a command's arguments failed: the usage text to print, or help asked for.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// Bad arguments; the message holds the usage.
    #[error("{0}")]
    Usage(String),
    /// `-h`/`--help`: print and exit 0.
    #[error("{0}")]
    Help(String),
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn var_name(key: &str) -> String {
    key.trim_start_matches('-')
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_uppercase()
        .replace('-', "_")
}

/// The usage with every argument-less option marked repeatable (`-v, --verbose ...`), so
/// `-vvvv` counts as the original's parser did.
fn repeatable_flags(usage: &str) -> String {
    let flag =
        regex::Regex::new(r"^(\s*-[^\s=<]+(?:,?\s+-[^\s=<]+)*)(\s{2,}.*)?$").expect("valid regex");
    let mut in_options = false;
    usage
        .lines()
        .map(|line| {
            if line.trim_start().to_lowercase().starts_with("options:") {
                in_options = true;
            }
            let body = line
                .trim_start()
                .strip_prefix("Options:")
                .map_or(line, |_| line);
            match flag.captures(body) {
                Some(c) if in_options && !body.contains("...") => {
                    format!("{} ...{}", &c[1], c.get(2).map_or("", |m| m.as_str()))
                }
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses `args` (without the command name) against `usage`.
pub fn parse(
    usage: &str,
    command: &str,
    args: &[String],
) -> Result<Vec<(String, String)>, OptionsError> {
    let argv: Vec<String> = ["vagga".to_owned(), command.to_owned()]
        .into_iter()
        .chain(args.iter().cloned())
        .collect();
    if usage.contains("[options]") && args.iter().any(|a| a == "-h" || a == "--help") {
        return Err(OptionsError::Help(usage.trim().to_owned()));
    }
    let attempt = |usage: &str| {
        Docopt::new(usage)
            .map(|d| d.argv(argv.clone()).help(true))
            .and_then(|d| d.parse())
    };
    let map = match attempt(usage) {
        Ok(map) => map,
        Err(e) if !e.fatal() => return Err(OptionsError::Help(usage.trim().to_owned())),
        Err(e) => match attempt(&repeatable_flags(usage)) {
            Ok(map) => map,
            Err(_) => {
                let text = e.to_string();
                let text = if text.contains("Usage:") {
                    text
                } else {
                    format!("{text}\n{}", usage.trim())
                };
                return Err(OptionsError::Usage(text));
            }
        },
    };
    let mut out = Vec::new();
    let mut entries: Vec<(&String, &Value)> = map.map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in entries {
        // The command name itself is the usage's first word after "vagga".
        if key == command {
            continue;
        }
        let name = var_name(key);
        let is_option = key.starts_with('-');
        let (raw, cli) = match value {
            Value::Switch(on) => (
                if *on {
                    "true".to_owned()
                } else {
                    String::new()
                },
                if *on && is_option {
                    key.clone()
                } else {
                    String::new()
                },
            ),
            Value::Counted(n) => (
                n.to_string(),
                std::iter::repeat_n(key.as_str(), *n as usize)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Value::Plain(Some(v)) => (
                v.clone(),
                if is_option {
                    format!("{key} {}", shell_quote(v))
                } else {
                    shell_quote(v)
                },
            ),
            Value::Plain(None) => (String::new(), String::new()),
            Value::List(items) => (
                items.join(" "),
                items
                    .iter()
                    .map(|v| {
                        if is_option {
                            format!("{key} {}", shell_quote(v))
                        } else {
                            shell_quote(v)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        };
        out.push((format!("VAGGAOPT_{name}"), raw));
        out.push((format!("VAGGACLI_{name}"), cli));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = "Usage: vagga c [options] [<file>...]\n\nOptions:\n  -v, --verbose  x\n  --exit-code <code>  y\n";

    fn env(args: &[&str]) -> Result<Vec<(String, String)>, OptionsError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(USAGE, "c", &args)
    }

    fn get(vars: &[(String, String)], key: &str) -> String {
        vars.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    #[test]
    fn counts_values_and_lists() {
        let vars = env(&["-vvvv", "--verbose", "--exit-code", "1", "a b", "c"]).unwrap();
        assert_eq!(get(&vars, "VAGGAOPT_VERBOSE"), "5");
        assert_eq!(get(&vars, "VAGGAOPT_EXIT_CODE"), "1");
        assert_eq!(get(&vars, "VAGGACLI_EXIT_CODE"), "--exit-code 1");
        assert_eq!(get(&vars, "VAGGAOPT_FILE"), "a b c");
        assert_eq!(get(&vars, "VAGGACLI_FILE"), "'a b' c");
    }

    #[test]
    fn bad_arguments_give_the_usage() {
        let Err(OptionsError::Usage(text)) = env(&["--bad-arg"]) else {
            panic!("accepted a bad flag")
        };
        assert!(text.contains("Usage: vagga c [options]"), "{text}");
        assert!(matches!(env(&["--help"]), Err(OptionsError::Help(_))));
    }
}
