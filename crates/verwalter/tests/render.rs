//! `verwalter_render` as the daemon and users run it: exit codes, `--check`, `--diff`,
//! apply commands (spec §2.6, V13).

mod common;

use std::fs;
use std::path::Path;

use assert_cmd::Command;
use common::{render_bin, write_tree};
use serde_json::json;

fn render(
    config: &Path,
    log: &Path,
    vars: &serde_json::Value,
    extra: &[&str],
) -> std::process::Output {
    Command::new(render_bin())
        .arg("--config-dir")
        .arg(config)
        .arg("--log-dir")
        .arg(log)
        .args(extra)
        .arg(vars.to_string())
        .output()
        .unwrap()
}

fn role(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = tmp.join("config");
    let out = tmp.join("out");
    let recipe = format!(
        r#"templates:
  main: main.conf.hbs
commands:
- !Copy {{dest: "{out}/main.conf", mode: 0o600}}
- !SplitText
  section: '^# file: (\S+)$'
  validate: '^[a-z]+$'
  dest: "{out}/split/(*).conf"
- !Condition
  dirs-changed: ["{out}/split"]
  commands:
  - !Cmd [sh, -c, "echo changed >> {out}/../marker"]
"#,
        out = out.display()
    );
    write_tree(
        &config,
        &[
            ("templates/app/v1/app.render.yaml", &recipe),
            (
                "templates/app/v1/main.conf.hbs",
                "# file: alpha\nn={{n}}\n# file: beta\nrole={{role}}\n",
            ),
        ],
    );
    (config, out)
}

#[test]
fn renders_applies_and_skips_unchanged_conditions() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, out) = role(tmp.path());
    let log = tmp.path().join("log");
    let vars = json!({"template": "app/v1", "role": "app", "n": 3, "verwalter_version": verwalter::VERSION});
    let output = render(&config, &log, &vars, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fs::read_to_string(out.join("split/alpha.conf")).unwrap(),
        "n=3\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("split/beta.conf")).unwrap(),
        "role=app\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(out.join("main.conf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("marker")).unwrap(),
        "changed\n"
    );
    // Same vars again: nothing changed, the !Condition does not fire.
    assert!(render(&config, &log, &vars, &[]).status.success());
    assert_eq!(
        fs::read_to_string(tmp.path().join("marker")).unwrap(),
        "changed\n"
    );
    let role_log = fs::read_to_string(log.join("app/latest")).unwrap();
    assert!(role_log.contains("unchanged, skipped"), "{role_log}");
}

#[test]
fn exit_codes_name_the_failure_and_leave_the_host_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, out) = role(tmp.path());
    let log = tmp.path().join("log");
    let code = |vars: &serde_json::Value| render(&config, &log, vars, &[]).status.code();
    assert_eq!(code(&json!({"role": "app"})), Some(4), "no template var");
    assert_eq!(
        code(&json!({"template": "app/v1", "verwalter_version": "0.0.0-other"})),
        Some(5)
    );
    let bad_args = Command::new(render_bin())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(bad_args.status.code(), Some(2));
    let bad_vars = Command::new(render_bin()).arg("[1, 2]").output().unwrap();
    assert_eq!(bad_vars.status.code(), Some(3));

    // A render.yaml with an unknown key: exit 10 with file:line:column, nothing written.
    let recipe = config.join("templates/app/v1/app.render.yaml");
    let original = fs::read_to_string(&recipe).unwrap();
    fs::write(&recipe, original.replace("validate:", "validate_typo:")).unwrap();
    let output = render(&config, &log, &json!({"template": "app/v1", "n": 1}), &[]);
    assert_eq!(output.status.code(), Some(10));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("app.render.yaml:7:3: commands[1]: unknown field `validate_typo`"),
        "{stderr}"
    );
    assert!(!out.exists());

    // A failing command: exit 20, later commands skipped.
    fs::write(
        &recipe,
        "templates: {main: main.conf.hbs}\ncommands:\n- !Cmd [false]\n- !Sh \"touch never\"\n",
    )
    .unwrap();
    let output = render(&config, &log, &json!({"template": "app/v1"}), &[]);
    assert_eq!(output.status.code(), Some(20));

    // An unknown name in a command: exit 10 before any command runs.
    fs::write(
        &recipe,
        "templates: {main: main.conf.hbs}\ncommands:\n- !Sh \"touch {{ files.nope }}\"\n",
    )
    .unwrap();
    let output = render(&config, &log, &json!({"template": "app/v1"}), &[]);
    assert_eq!(output.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&output.stderr).contains("command 1"));
}

#[test]
fn check_renders_into_the_scratch_dir_only_and_diffs() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, out) = role(tmp.path());
    let log = tmp.path().join("log");
    let scratch = tmp.path().join("scratch");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("main.conf"), "# file: alpha\nn=1\n").unwrap();
    let vars = json!({"template": "app/v1", "role": "app", "n": 2, "missing_in_template": 1});
    let output = render(
        &config,
        &log,
        &vars,
        &["--check", "-C", scratch.to_str().unwrap(), "--diff"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("would run: !Copy"), "{stdout}");
    assert!(stdout.contains("-n=1"), "{stdout}");
    assert!(stdout.contains("+n=2"), "{stdout}");
    assert_eq!(
        fs::read_to_string(out.join("main.conf")).unwrap(),
        "# file: alpha\nn=1\n"
    );
    assert!(!out.join("split").exists());
    assert!(!log.exists(), "--check writes no log");
    assert!(fs::read_dir(&scratch).unwrap().count() > 0);

    // A missing variable is a warning under --check.
    let output = render(&config, &log, &json!({"template": "app/v1"}), &["--check"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("warning:"));

    // A broken copy of the config: exit 10 with file:line:column, nothing written.
    fs::write(
        config.join("templates/app/v1/app.render.yaml"),
        "templates: [\n",
    )
    .unwrap();
    let output = render(
        &config,
        &log,
        &vars,
        &[
            "--check",
            "-C",
            tmp.path().join("scratch2").to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&output.stderr).contains("app.render.yaml:1:12"));
}

#[test]
fn tera_templates_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    write_tree(
        &config,
        &[
            (
                "templates/x/v1/x.render.yaml",
                "templates: {a: a.tera}\ncommands: []\n",
            ),
            ("templates/x/v1/a.tera", "{{ x }}"),
        ],
    );
    let output = render(
        &config,
        &tmp.path().join("log"),
        &json!({"template": "x/v1"}),
        &["--check"],
    );
    assert_eq!(output.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&output.stderr).contains("a.tera"));
}

#[test]
fn peek_log_records_the_external_log_offset_in_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    let app_logs = tmp.path().join("app-logs");
    fs::create_dir_all(&app_logs).unwrap();
    fs::write(app_logs.join("app.log"), "0123456789").unwrap();
    write_tree(
        &config,
        &[
            (
                "templates/x/v1/x.render.yaml",
                "commands:\n- !PeekLog app/app.log\n",
            ),
            (
                "sandbox/logs.yaml",
                &format!("log_dirs: {{app: {}}}\n", app_logs.display()),
            ),
        ],
    );
    let log = tmp.path().join("log");
    let output = render(
        &config,
        &log,
        &json!({"template": "x/v1", "deployment_id": "d7"}),
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let index = fs::read_to_string(log.join(".index/latest")).unwrap();
    let external = index
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|line| line[3] == "ExternalLog")
        .unwrap();
    assert_eq!(external[1], "d7");
    assert_eq!(
        external[2],
        json!({"variant": "External", "fields": ["app/app.log", 10]})
    );

    // An alias no sandbox file names: exit 20.
    fs::write(
        config.join("templates/x/v1/x.render.yaml"),
        "commands:\n- !PeekLog other/app.log\n",
    )
    .unwrap();
    let output = render(&config, &log, &json!({"template": "x/v1"}), &[]);
    assert_eq!(output.status.code(), Some(20));
}

#[test]
fn vars_from_stdin_as_the_daemon_feeds_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, out) = role(tmp.path());
    let log = tmp.path().join("log");
    let run = |stdin: String| {
        Command::new(render_bin())
            .arg("--vars-file")
            .arg("-")
            .arg("--config-dir")
            .arg(&config)
            .arg("--log-dir")
            .arg(&log)
            .write_stdin(stdin)
            .output()
            .unwrap()
    };
    let vars = json!({"template": "app/v1", "role": "app", "n": 4, "verwalter_version": verwalter::VERSION});
    let output = run(vars.to_string());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fs::read_to_string(out.join("split/alpha.conf")).unwrap(),
        "n=4\n"
    );
    // Not JSON, or not an object: bad vars, nothing applied.
    for bad in ["{\"n\": ", "[1, 2]"] {
        let output = run(bad.to_owned());
        assert_eq!(output.status.code(), Some(3), "{bad}");
    }
    assert_eq!(
        fs::read_to_string(out.join("split/alpha.conf")).unwrap(),
        "n=4\n"
    );
}
