//! The web UI in a real headless Chromium, driven over WebDriver (chromedriver + fantoccini),
//! against real verwalter daemons: every page loads without a console error, write buttons are
//! disabled until the write token is entered, an action posted from a role's button changes the
//! next schedule, a rollback from the Backups page restores an earlier schedule, an action
//! posted while frozen stays pending (and shown) until scheduling resumes, and a follower's page
//! points at the leader. Screenshots of every page
//! at desktop and phone width go to `target/ui-screenshots/`; with `VERWALTER_UI_DOCS=1` also to
//! `docs/img/verwalter-ui/`, the pictures of docs/verwalter-ui.md.
//!
//! Needs Debian's `chromium` and `chromium-driver` (tests/run.sh installs them): a missing
//! browser fails the test rather than skipping it.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Daemon, TOKEN, cantal_agent, free_port, is_root, request, run, wait_for, write_config,
    write_tree,
};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Role `web` on every live host with a `version` the schedule's buttons change.
const SCHEDULER: &str = r#"
local function scheduler(input)
  local version = "v1"
  for _, parent in ipairs(input.parents) do
    local web = parent.roles and parent.roles.web
    if web and web.version then version = web.version end
  end
  local ids = {}
  for id in pairs(input.actions) do ids[#ids + 1] = id end
  table.sort(ids)
  local changes = {}
  for _, id in ipairs(ids) do
    local action = input.actions[id]
    if action.button == "deploy" and action.version ~= version then
      changes[#changes + 1] = "web: " .. version .. " -> " .. action.version
      version = action.version
    end
  end
  local nodes = {}
  for _, peer in pairs(input.peers) do
    if peer.state ~= "dead" then nodes[peer.hostname] = {roles = {web = {}}} end
  end
  return {
    vars = {n = 2, counter = 0},
    roles = {web = {template = "web/v1", version = version, buttons = {
      {title = "Deploy v2", action = {button = "deploy", version = "v2"}},
      {title = "Deploy v3", action = {button = "deploy", version = "v3"}},
    }}},
    nodes = nodes,
    changes = changes,
  }, "web " .. version
end
return {scheduler = scheduler}
"#;

const PAGES: &[&str] = &[
    "roles",
    "peers",
    "schedule",
    "deployments",
    "actions",
    "backups",
    "election",
];

const DESKTOP: (u32, u32) = (1200, 820);
const PHONE: (u32, u32) = (360, 780);

/// `target/ui-screenshots`, next to the test binary's profile dir.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/ui-HASH -> target/ui-screenshots
    let dir = exe.ancestors().nth(3).unwrap().join("ui-screenshots");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free loopback port and one headless Chromium session through it.
struct Browser {
    driver: Child,
    driver_addr: SocketAddr,
    client: Client,
}

impl Browser {
    async fn start() -> Self {
        for (path, package) in [
            ("/usr/bin/chromedriver", "chromium-driver"),
            ("/usr/bin/chromium", "chromium"),
        ] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install the Debian package {package} (tests/run.sh does)"
            );
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for(Duration::from_secs(20), "chromedriver to listen", || {
            std::net::TcpStream::connect(driver_addr).ok()
        });
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--force-device-scale-factor=1", "--no-first-run",
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{driver_addr}"))
            .await
            .expect("a Chromium session through chromedriver");
        Self {
            driver,
            driver_addr,
            client,
        }
    }

    /// Console messages of level SEVERE since the last call (chromedriver's log endpoint,
    /// which fantoccini does not wrap).
    async fn console_errors(&self) -> Vec<String> {
        let session = self.client.session_id().await.unwrap().unwrap();
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let request = hyper::Request::post(format!(
            "http://{}/session/{session}/se/log",
            self.driver_addr
        ))
        .header("Content-Type", "application/json")
        .body(r#"{"type": "browser"}"#.into())
        .unwrap();
        let response = http.request(request).await.unwrap();
        assert_eq!(response.status(), 200, "chromedriver's browser log");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let log: Value = serde_json::from_slice(&body).unwrap();
        log["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn assert_no_console_errors(&self, what: &str) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "console errors on {what}: {errors:#?}");
    }

    /// Waits until `css` matches an element (or fails after 15 s, with the page's text).
    async fn wait(&self, css: &str) -> fantoccini::elements::Element {
        let start = Instant::now();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                return element;
            }
            if start.elapsed() > Duration::from_secs(15) {
                let text = self.text("body").await;
                panic!("timed out waiting for {css}; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the text of `css` satisfies `check`; returns it.
    async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = self.text(css).await;
            if check(&text) {
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what} in {css}; it says:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the button `css` is enabled (or disabled).
    async fn wait_enabled(&self, css: &str, enabled: bool) {
        let start = Instant::now();
        loop {
            let disabled = self.wait(css).await.attr("disabled").await.unwrap();
            if disabled.is_none() == enabled {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {css} to be {}",
                if enabled { "enabled" } else { "disabled" }
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's write buttons (those that post): their `data-act` and whether disabled.
    async fn write_buttons(&self) -> Vec<(String, bool)> {
        let css = [
            "action",
            "post-action-form",
            "rollback",
            "resume",
            "force-render",
        ]
        .map(|act| format!("main button[data-act=\"{act}\"]"))
        .join(", ");
        let mut buttons = Vec::new();
        for button in self.client.find_all(Locator::Css(&css)).await.unwrap() {
            let act = button.attr("data-act").await.unwrap().unwrap_or_default();
            buttons.push((act, button.attr("disabled").await.unwrap().is_some()));
        }
        buttons
    }

    /// Enters the write token the way a keyboard user does: Enter on the header's button,
    /// the token, Enter in the field.
    async fn enter_token(&self, token: &str) {
        let enter = char::from(fantoccini::key::Key::Enter).to_string();
        self.wait("#token-state button[data-act=\"set-token\"]")
            .await
            .send_keys(&enter)
            .await
            .unwrap();
        let input = self.wait("#token-dialog[open] #token-input").await;
        input.send_keys(&format!("{token}{enter}")).await.unwrap();
        let start = Instant::now();
        while self
            .client
            .find(Locator::Css("#token-dialog[open]"))
            .await
            .is_ok()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the token dialog stays open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.wait(css).await.click().await.unwrap();
    }

    /// Opens `#/page` on `base` and waits until its data is shown.
    async fn open(&self, base: &str, route: &str) {
        self.client.goto(&format!("{base}#/{route}")).await.unwrap();
        let page = route.split('/').next().unwrap();
        self.wait(&format!("main[data-page=\"{page}\"][data-loaded]"))
            .await;
    }

    async fn resize(&self, (width, height): (u32, u32)) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    /// Saves a PNG of the viewport as a test artifact and, with `VERWALTER_UI_DOCS=1`, as
    /// the picture of docs/verwalter-ui.md when that page shows it.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let file = format!("{name}.png");
        fs::write(screenshot_dir().join(&file), &png).unwrap();
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let page = fs::read_to_string(docs.join("verwalter-ui.md")).unwrap_or_default();
        let shown = page.contains(&format!("img/verwalter-ui/{file}"));
        if shown && std::env::var_os("VERWALTER_UI_DOCS").is_some() {
            let dir = docs.join("img/verwalter-ui");
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(&file), &png).unwrap();
        }
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn write_ui_config(config: &Path, out: &Path) {
    write_config(config, out);
    write_tree(config, &[("scheduler/v1/main.lua", SCHEDULER)]);
}

fn web_version(daemon_addr: SocketAddr) -> Option<String> {
    let (status, body) = request(daemon_addr, "GET", "/v1/schedule", &[], "");
    let schedule: Value = (status == 200).then(|| serde_json::from_str(&body).ok())??;
    schedule["data"]["roles"]["web"]["version"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_load_actions_change_the_schedule_and_rollback_restores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    write_ui_config(&dir.join("config"), &tmp.path().join("out"));
    let daemon = Daemon::start(
        &dir,
        "127.0.0.1",
        free_port(),
        "solo",
        "0123456789abcdef0123456789abcdef",
        &[],
    );
    let addr = daemon.addr;
    wait_for(Duration::from_secs(15), "the first schedule", || {
        (web_version(addr)? == "v1").then_some(())
    });
    let base = format!("http://{addr}/");
    let browser = Browser::start().await;

    // Every page, at both widths, without a console error.
    for (width, size) in [("desktop", DESKTOP), ("phone", PHONE)] {
        browser.resize(size).await;
        for page in PAGES {
            browser.open(&base, page).await;
            browser.assert_no_console_errors(page).await;
            browser.screenshot(&format!("{page}-{width}")).await;
        }
    }
    browser.resize(DESKTOP).await;
    browser.open(&base, "roles").await;
    browser
        .wait_text(".card[data-key=\"web\"] .version", "version v1", |t| {
            t == "v1"
        })
        .await;
    // Without cantal the daemon reports it, and the header shows it on every page.
    let errors = browser.text("#errors").await;
    assert!(
        errors.contains("1 error") && errors.contains("cantal"),
        "{errors}"
    );

    // Without the token every write button is disabled, and the header says why.
    let deploy_v2 = "button[data-title=\"Deploy v2\"]";
    browser.wait_enabled(deploy_v2, false).await;
    assert_eq!(
        browser
            .wait(deploy_v2)
            .await
            .attr("aria-describedby")
            .await
            .unwrap()
            .as_deref(),
        Some("token-hint")
    );
    let hint = browser.text("#token-hint").await;
    assert!(
        hint.contains("enter the write token to enable actions"),
        "{hint}"
    );
    for page in ["actions", "backups", "deployments"] {
        browser.open(&base, page).await;
        let buttons = browser.write_buttons().await;
        assert!(!buttons.is_empty(), "no write buttons on {page}");
        assert!(
            buttons.iter().all(|(_, disabled)| *disabled),
            "write buttons on {page} without the token: {buttons:?}"
        );
    }
    browser.open(&base, "roles").await;

    // A wrong token enables the buttons until the daemon refuses it: the 401 message, the
    // token forgotten and the buttons disabled again.
    browser.enter_token("wrong").await;
    browser.wait_enabled(deploy_v2, true).await;
    browser.click(deploy_v2).await;
    browser.click("#confirm-ok").await;
    browser
        .wait_text(".message.error", "the 401 message", |t| {
            t.contains("token is missing or wrong")
        })
        .await;
    browser.wait_enabled(deploy_v2, false).await;
    browser.wait("#token-hint").await;
    let stored = browser
        .client
        .execute("return sessionStorage.getItem('verwalter-token')", vec![])
        .await
        .unwrap();
    assert_eq!(stored, Value::Null, "the refused token is forgotten");
    assert_eq!(web_version(addr).as_deref(), Some("v1"));
    // The browser logs the refused requests themselves, and nothing else.
    let refused = browser.console_errors().await;
    assert!(refused.iter().all(|e| e.contains("401")), "{refused:#?}");
    browser.screenshot("refused-desktop").await;
    browser
        .click(".message.error button[data-act=\"dismiss\"]")
        .await;

    // The right token, entered once, enables the buttons; an action shows the plan before it
    // is confirmed, and the next schedule has v2.
    browser.enter_token(TOKEN).await;
    browser.wait_enabled(deploy_v2, true).await;
    browser
        .wait("#token-state button[data-act=\"forget-token\"]")
        .await;
    browser.click(deploy_v2).await;
    browser
        .wait_text("#confirm-preview", "the plan", |t| t.contains("version"))
        .await;
    browser.screenshot("confirm-desktop").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_text(".card[data-key=\"web\"] .version", "version v2", |t| {
            t == "v2"
        })
        .await;
    assert_eq!(web_version(addr).as_deref(), Some("v2"));
    browser.open(&base, "schedule").await;
    browser
        .wait_text("main", "the change line", |t| t.contains("web: v1 -> v2"))
        .await;
    browser.screenshot("schedule-after-action-desktop").await;

    // Roll back to the schedule with v1 from the Backups page (the token is still kept).
    let backups = daemon.json("/v1/backups");
    let v1 = backups
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .find(|name| {
            daemon.json(&format!("/v1/backup/{name}"))["data"]["roles"]["web"]["version"] == "v1"
        })
        .expect("a backup of the v1 schedule");
    browser.open(&base, "backups").await;
    browser
        .click(&format!(
            "li[data-backup=\"{v1}\"] button[data-act=\"rollback\"]"
        ))
        .await;
    // The confirmation shows what the rollback changes.
    browser
        .wait_text("#confirm-preview", "the rollback's diff", |t| {
            let line =
                |op: &str, text: &str| t.lines().any(|l| l.starts_with(op) && l.contains(text));
            line("-", r#""version": "v2""#) && line("+", r#""version": "v1""#)
        })
        .await;
    browser.screenshot("rollback-confirm-desktop").await;
    browser.click("#confirm-ok").await;
    browser.wait("#frozen-note").await;
    assert_eq!(web_version(addr).as_deref(), Some("v1"));
    assert_eq!(daemon.json("/v1/schedule")["rollback_of"], v1.as_str());
    browser.screenshot("backups-after-rollback-desktop").await;
    browser.open(&base, "roles").await;
    browser
        .wait_text(".card[data-key=\"web\"] .version", "version v1", |t| {
            t == "v1"
        })
        .await;

    // While frozen the scheduler runs but publishes nothing, so an action stays pending: the
    // Actions page lists it until scheduling resumes and the next schedule consumes it.
    browser.click("button[data-title=\"Deploy v3\"]").await;
    browser
        .wait_text("#confirm-preview", "the plan", |t| t.contains("v3"))
        .await;
    browser.click("#confirm-ok").await;
    let messages = browser
        .wait_text("#messages", "the registered action", |t| {
            t.contains("Deploy v3: action")
        })
        .await;
    let id = messages
        .split("Deploy v3: action ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the action id in the message")
        .to_owned();
    browser.open(&base, "actions").await;
    let pending = format!("ul.pending li[data-key=\"{id}\"]");
    let shown = browser
        .wait_text(&pending, "the pending action", |t| {
            t.contains(r#""version":"v3""#)
        })
        .await;
    assert!(shown.contains(r#""button":"deploy""#), "{shown}");
    // A scheduler run after the action was registered left it pending and the schedule as is.
    let id_ms: u64 = id.parse().unwrap();
    wait_for(
        Duration::from_secs(15),
        "a scheduler run after the action",
        || {
            let last_run = daemon.json("/v1/status")["scheduler"]["last_run"].as_u64()?;
            (last_run > id_ms).then_some(())
        },
    );
    assert!(daemon.json("/v1/pending_actions").get(&id).is_some());
    assert_eq!(web_version(addr).as_deref(), Some("v1"));
    browser.wait(&pending).await;
    // The messages so far would push the list out of the picture.
    browser
        .client
        .execute(
            "document.querySelectorAll('#messages [data-act=dismiss]').forEach((b) => b.click()); \
             window.scrollTo(0, 0)",
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("actions-pending-desktop").await;
    browser
        .click("#frozen-note button[data-act=\"resume\"]")
        .await;
    browser.click("#confirm-ok").await;
    browser
        .wait_text("main", "no pending action", |t| {
            t.contains("None: every action was consumed")
        })
        .await;
    assert_eq!(web_version(addr).as_deref(), Some("v3"));
    assert_eq!(daemon.json("/v1/pending_actions"), json!({}));
    browser.open(&base, "schedule").await;
    browser
        .wait_text("main", "the change line", |t| t.contains("web: v1 -> v3"))
        .await;

    // A deployment's log, followed on its own page.
    let index = daemon.get("/v1/log/index/latest").1;
    let last: Value = serde_json::from_str(index.lines().last().unwrap()).unwrap();
    let deployment = last[1].as_str().unwrap();
    browser
        .open(&base, &format!("deployments/{deployment}"))
        .await;
    browser
        .wait_text("#deployment", "the deployment's log", |t| {
            t.contains("Role web")
        })
        .await;
    browser.screenshot("deployment-desktop").await;
    // Two polls of following the log (nothing new is appended) log no error either.
    tokio::time::sleep(Duration::from_secs(4)).await;
    browser
        .assert_no_console_errors("the action and rollback")
        .await;
    browser.close().await;
}

/// Two hosts as network namespaces on a bridge that also has an address in the test's own
/// namespace, so the browser reaches both; each runs the real cantal-agent and verwalter.
struct Net {
    bridge: String,
    namespaces: Vec<String>,
    cantals: Vec<Child>,
    daemons: Vec<Daemon>,
    ips: Vec<String>,
    _tmp: tempfile::TempDir,
}

const VERWALTER_PORT: u16 = 8379;
const CANTAL_PORT: u16 = 22682;

impl Net {
    fn start(size: usize) -> Self {
        let pid = std::process::id();
        let subnet = pid % 250 + 1;
        let tag = format!("{:x}", pid % 0xfffff);
        let bridge = format!("vubr{tag}");
        let mut net = Self {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
            cantals: Vec::new(),
            daemons: Vec::new(),
            ips: Vec::new(),
            _tmp: tempfile::tempdir().unwrap(),
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.80.{subnet}.254/24"),
            "dev",
            &bridge,
        ]);
        run(&["ip", "link", "set", &bridge, "up"]);
        let agent = cantal_agent();
        for i in 0..size {
            let ns = format!("vu{tag}n{i}");
            let (veth, inner) = (format!("vu{tag}v{i}"), format!("vu{tag}i{i}"));
            let ip = format!("10.80.{subnet}.{}", i + 1);
            net.namespaces.push(ns.clone());
            net.ips.push(ip.clone());
            run(&["ip", "netns", "add", &ns]);
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", &inner,
            ]);
            run(&["ip", "link", "set", &inner, "netns", &ns]);
            run(&["ip", "link", "set", &veth, "master", &bridge]);
            run(&["ip", "link", "set", &veth, "up"]);
            let in_ns = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", &ns];
                full.extend_from_slice(args);
                run(&full);
            };
            in_ns(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner]);
            in_ns(&["ip", "link", "set", &inner, "up"]);
            in_ns(&["ip", "link", "set", "lo", "up"]);
        }
        for i in 0..size {
            let dir = net._tmp.path().join(format!("n{i}"));
            fs::create_dir_all(&dir).unwrap();
            let hostname = format!("n{i}");
            let id = format!("{:032x}", 0xdec0 + i);
            let join = if i == 0 {
                String::new()
            } else {
                format!(" --join {}:{CANTAL_PORT}", net.ips[0])
            };
            let log = fs::File::create(dir.join("cantal.log")).unwrap();
            let cantal = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &net.namespaces[i],
                    "unshare",
                    "--uts",
                    "sh",
                    "-c",
                ])
                .arg(format!(
                    "hostname {hostname} && exec {} --host {} --port {CANTAL_PORT} \
                     --cluster-name vwui --override-machine-id {id} --socket {} \
                     --storage-dir {} --log-format text{join}",
                    agent.display(),
                    net.ips[i],
                    dir.join("cantal.sock").display(),
                    dir.join("cantal-storage").display(),
                ))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            net.cantals.push(cantal);
            write_ui_config(&dir.join("config"), &dir.join("out"));
            let socket = dir.join("cantal.sock").display().to_string();
            let prefix = [
                "ip",
                "netns",
                "exec",
                &net.namespaces[i],
                "unshare",
                "--uts",
            ];
            net.daemons.push(Daemon::start_with(
                Some(&prefix),
                &dir,
                &net.ips[i],
                VERWALTER_PORT,
                &hostname,
                &id,
                &["--cantal-socket", &socket, "--minority-grace", "2s"],
            ));
        }
        net
    }

    fn leader_of(&self, i: usize) -> Option<String> {
        let (status, body) = self.daemons[i].get("/v1/status");
        let status: Value = (status == 200).then(|| serde_json::from_str(&body).ok())??;
        status["leader"]["id"].as_str().map(str::to_owned)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.daemons.clear();
        for cantal in &mut self.cantals {
            let _ = cantal.kill();
            let _ = cantal.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_page_shows_the_leader_and_links_writes_to_it() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let net = Net::start(2);
    let (leader, follower) = wait_for(Duration::from_secs(30), "one leader", || {
        let leader = net.leader_of(0)?;
        let agreed = net.leader_of(1)? == leader;
        let index = net.daemons.iter().position(|d| {
            let (_, body) = d.get("/v1/status");
            serde_json::from_str::<Value>(&body)
                .ok()
                .is_some_and(|s| s["id"] == leader.as_str())
        })?;
        let schedule = web_version(net.daemons[1 - index].addr).is_some();
        (agreed && schedule).then_some((index, 1 - index))
    });
    let leader_addr = net.daemons[leader].addr;
    let browser = Browser::start().await;
    let base = format!("http://{}/", net.daemons[follower].addr);

    for (width, size) in [("desktop", DESKTOP), ("phone", PHONE)] {
        browser.resize(size).await;
        browser.open(&base, "roles").await;
        let info = browser
            .wait_text("#leader-info", "the leader", |t| {
                t.contains(&leader_addr.to_string())
            })
            .await;
        assert!(info.contains(&format!("n{leader}")), "{info}");
        browser.screenshot(&format!("follower-{width}")).await;
        // The leader's peer list: the follower, alive, with the schedule it reported.
        browser
            .open(&format!("http://{leader_addr}/"), "peers")
            .await;
        browser
            .wait_text("main", "the follower alive", |t| {
                t.contains(&format!("n{follower}")) && t.contains("Alive")
            })
            .await;
        browser.screenshot(&format!("peers-cluster-{width}")).await;
    }
    browser.open(&base, "roles").await;
    browser.resize(DESKTOP).await;
    for page in PAGES {
        browser.open(&base, page).await;
        browser.wait("#leader-link").await;
        browser
            .assert_no_console_errors(&format!("the follower's {page}"))
            .await;
    }
    browser.open(&base, "roles").await;
    let href = browser
        .wait("#leader-link")
        .await
        .attr("href")
        .await
        .unwrap();
    assert_eq!(
        href.as_deref(),
        Some(format!("http://{leader_addr}/#/roles").as_str())
    );

    // A write on the follower points at the leader instead of posting, so it needs no token.
    assert!(
        browser
            .client
            .find(Locator::Css("#token-hint"))
            .await
            .is_err()
    );
    browser
        .wait_enabled("button[data-title=\"Deploy v2\"]", true)
        .await;
    browser.click("button[data-title=\"Deploy v2\"]").await;
    browser
        .wait_text("#confirm-body", "the leader's address", |t| {
            t.contains(&leader_addr.to_string())
        })
        .await;
    browser.screenshot("follower-write-desktop").await;
    browser.click("#confirm-body a").await;
    browser.wait("main[data-page=\"roles\"][data-loaded]").await;
    browser
        .wait_text("#leader-info", "the leader's own page", |t| {
            t.contains("This node leads")
        })
        .await;
    browser
        .assert_no_console_errors("the follower and leader pages")
        .await;
    browser.close().await;
}
