//! `lithos_ps`: the tree, its knots and containers from /proc, with states, restarts and
//! config errors from the control socket when it answers.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

use protocol::pb::lithos as pb;
use serde::Serialize;

use crate::config::Master;
use crate::tree::find_knots;

#[derive(Debug, Serialize)]
pub struct Output {
    pub trees: Vec<Tree>,
}

#[derive(Debug, Serialize)]
pub struct Tree {
    pub pid: i32,
    pub config: String,
    #[serde(skip)]
    pub usage: Usage,
    pub sandboxes: Vec<Sandbox>,
}

#[derive(Debug, Serialize)]
pub struct Sandbox {
    pub name: String,
    pub config_error: Option<String>,
    pub processes: Vec<Process>,
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub name: String,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Serialize)]
pub struct Instance {
    pub n: String,
    pub knot_pid: Option<i32>,
    pub pid: Option<i32>,
    pub state: String,
    pub uptime_s: Option<u64>,
    pub restarts: u64,
    pub failures: u32,
    pub mem_rss: u64,
    pub threads: u64,
    #[serde(skip)]
    pub processes: u64,
}

/// Processes, threads and resident memory of a process subtree.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub processes: u64,
    pub threads: u64,
    pub rss: u64,
}

struct ProcInfo {
    ppid: i32,
    threads: u64,
    rss: u64,
    start_ticks: u64,
}

fn snapshot() -> HashMap<i32, ProcInfo> {
    let page = procfs::page_size();
    let mut map = HashMap::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            if let Ok(stat) = p.stat() {
                map.insert(
                    p.pid,
                    ProcInfo {
                        ppid: stat.ppid,
                        threads: stat.num_threads.max(0) as u64,
                        rss: stat.rss * page,
                        start_ticks: stat.starttime,
                    },
                );
            }
        }
    }
    map
}

fn subtree(procs: &HashMap<i32, ProcInfo>, root: i32) -> Usage {
    let mut usage = Usage::default();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(info) = procs.get(&pid) {
            usage.processes += 1;
            usage.threads += info.threads;
            usage.rss += info.rss;
            stack.extend(procs.iter().filter(|(_, i)| i.ppid == pid).map(|(p, _)| *p));
        }
    }
    usage
}

fn children(procs: &HashMap<i32, ProcInfo>, pid: i32) -> Vec<i32> {
    let mut c: Vec<i32> = procs
        .iter()
        .filter(|(_, i)| i.ppid == pid)
        .map(|(p, _)| *p)
        .collect();
    c.sort();
    c
}

fn state_name(state: i32) -> String {
    match pb::InstanceState::try_from(state) {
        Ok(pb::InstanceState::Running) => "running",
        Ok(pb::InstanceState::Starting) => "starting",
        Ok(pb::InstanceState::Backoff) => "backoff",
        Ok(pb::InstanceState::FailedSetup) => "failed-setup",
        Ok(pb::InstanceState::GaveUp) => "gave-up",
        _ => "unknown",
    }
    .to_owned()
}

/// Trees of this master with their instances. `status` is the tree's own report, if any.
pub fn collect(master: &Master, status: Option<pb::StatusResponse>) -> Output {
    let procs = snapshot();
    let ticks = procfs::ticks_per_second().max(1);
    let uptime_now = <procfs::Uptime as procfs::Current>::current()
        .map(|u| u.uptime)
        .unwrap_or(0.0);
    let tree_pids: Vec<i32> = procfs::process::all_processes()
        .map(|all| {
            all.flatten()
                .filter(|p| {
                    let Ok(cmd) = p.cmdline() else { return false };
                    let is_tree = cmd
                        .first()
                        .and_then(|a| {
                            Path::new(a)
                                .file_name()?
                                .to_str()
                                .map(|n| n == "lithos_tree")
                        })
                        .unwrap_or(false);
                    let master_arg = cmd
                        .iter()
                        .position(|a| a == "--master" || a == "-C")
                        .and_then(|i| cmd.get(i + 1))
                        .map(|m| std::fs::canonicalize(m).unwrap_or_else(|_| m.into()))
                        .unwrap_or_else(|| "/etc/lithos/master.yaml".into());
                    is_tree
                        && std::fs::canonicalize(&master.path).unwrap_or(master.path.clone())
                            == master_arg
                })
                .map(|p| p.pid)
                .collect()
        })
        .unwrap_or_default();
    let status_pid = status.as_ref().map(|s| s.pid as i32);
    let mut by_name: BTreeMap<String, pb::Instance> = BTreeMap::new();
    let mut errors: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut entries: BTreeMap<(String, String), ()> = BTreeMap::new();
    if let Some(s) = &status {
        for sbx in &s.sandboxes {
            let err = sbx
                .config_errors
                .first()
                .map(|e| format!("{}:{}:{}: {}", e.file, e.line, e.column, e.message));
            errors.insert(sbx.name.clone(), err);
            for e in &sbx.entries {
                entries.insert((sbx.name.clone(), e.name.clone()), ());
                for i in &e.instances {
                    by_name.insert(i.name.clone(), i.clone());
                }
            }
        }
    }
    // Instances seen in /proc (knots) and in the status, keyed by name.
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    for knot in find_knots(&master.path) {
        let init = children(&procs, knot.pid).into_iter().next();
        let app = init
            .and_then(|i| children(&procs, i).into_iter().next())
            .or(init);
        let usage = init.map(|i| subtree(&procs, i)).unwrap_or_default();
        let uptime = app
            .and_then(|p| procs.get(&p))
            .map(|i| (uptime_now - i.start_ticks as f64 / ticks as f64).max(0.0) as u64);
        let st = by_name.get(&knot.name);
        instances.insert(
            knot.name.clone(),
            Instance {
                n: knot
                    .name
                    .rsplit_once('.')
                    .map(|(_, n)| n.to_owned())
                    .unwrap_or_default(),
                knot_pid: Some(knot.pid),
                pid: app,
                state: st
                    .map(|s| state_name(s.state))
                    .unwrap_or_else(|| if app.is_some() { "running" } else { "failing" }.into()),
                uptime_s: uptime,
                restarts: st.map(|s| s.restarts).unwrap_or(0),
                failures: st.map(|s| s.failures).unwrap_or(0),
                mem_rss: usage.rss,
                threads: usage.threads,
                processes: usage.processes,
            },
        );
    }
    for (name, st) in &by_name {
        instances.entry(name.clone()).or_insert_with(|| Instance {
            n: name
                .rsplit_once('.')
                .map(|(_, n)| n.to_owned())
                .unwrap_or_default(),
            knot_pid: None,
            pid: None,
            state: state_name(st.state),
            uptime_s: None,
            restarts: st.restarts,
            failures: st.failures,
            mem_rss: 0,
            threads: 0,
            processes: 0,
        });
    }
    let mut sandboxes: BTreeMap<String, BTreeMap<String, Vec<Instance>>> = BTreeMap::new();
    for (sbx, entry) in entries.keys() {
        sandboxes
            .entry(sbx.clone())
            .or_default()
            .entry(entry.clone())
            .or_default();
    }
    for sbx in errors.keys() {
        sandboxes.entry(sbx.clone()).or_default();
    }
    for (name, inst) in instances {
        let Some((sbx, rest)) = name.split_once('/') else {
            continue;
        };
        let entry = rest.rsplit_once('.').map(|(e, _)| e).unwrap_or(rest);
        sandboxes
            .entry(sbx.to_owned())
            .or_default()
            .entry(entry.to_owned())
            .or_default()
            .push(inst);
    }
    let sandboxes: Vec<Sandbox> = sandboxes
        .into_iter()
        .map(|(name, procs)| Sandbox {
            config_error: errors.get(&name).cloned().flatten(),
            processes: procs
                .into_iter()
                .map(|(pname, mut instances)| {
                    instances.sort_by_key(|i| i.n.parse::<u64>().unwrap_or(u64::MAX));
                    Process {
                        name: pname,
                        instances,
                    }
                })
                .collect(),
            name,
        })
        .collect();
    let mut pids = tree_pids;
    if let Some(p) = status_pid
        && !pids.contains(&p)
    {
        pids.push(p);
    }
    let mut trees: Vec<Tree> = pids
        .into_iter()
        .map(|pid| Tree {
            pid,
            config: master.path.display().to_string(),
            usage: subtree(&procs, pid),
            sandboxes: Vec::new(),
        })
        .collect();
    match trees.first_mut() {
        Some(t) => t.sandboxes = sandboxes,
        None if !sandboxes.is_empty() => trees.push(Tree {
            pid: 0,
            config: master.path.display().to_string(),
            usage: Usage::default(),
            sandboxes,
        }),
        None => {}
    }
    Output { trees }
}

/// Asks the tree for its status (none when the socket does not answer).
pub async fn status(master: &Master) -> Option<pb::StatusResponse> {
    let channel = protocol::unix::connect(&master.control_socket).await.ok()?;
    let mut client = pb::control_client::ControlClient::new(channel);
    client
        .status(pb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

fn mem(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1}M", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{}k", bytes >> 10)
    }
}

fn uptime(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// The text tree view.
pub fn render(out: &Output, color: bool) -> String {
    let (bold, red, reset) = if color {
        ("\x1b[1m", "\x1b[31m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    let mut s = String::new();
    for t in &out.trees {
        let _ = writeln!(
            s,
            "{bold}{} tree {} [{}/{}] {}{reset}",
            t.pid,
            t.config,
            t.usage.processes,
            t.usage.threads,
            mem(t.usage.rss)
        );
        for sbx in &t.sandboxes {
            let _ = writeln!(s, "  {bold}{}{reset}", sbx.name);
            if let Some(e) = &sbx.config_error {
                let _ = writeln!(s, "    {red}config error: {e}{reset}");
            }
            for p in &sbx.processes {
                let _ = writeln!(s, "    {}", p.name);
                for i in &p.instances {
                    let name = format!("{}/{}.{}", sbx.name, p.name, i.n);
                    let extra = if i.restarts > 0 {
                        format!(" restarts={}", i.restarts)
                    } else {
                        String::new()
                    };
                    match (i.knot_pid, i.pid) {
                        (Some(_), Some(pid)) => {
                            let _ = writeln!(
                                s,
                                "      {pid} {name} {} [{}/{}] {}{extra}",
                                i.uptime_s.map(uptime).unwrap_or_default(),
                                i.processes,
                                i.threads,
                                mem(i.mem_rss)
                            );
                        }
                        (Some(knot), None) => {
                            let _ = writeln!(
                                s,
                                "      ({knot}) {name} {red}<{}>{reset}{extra}",
                                i.state
                            );
                        }
                        _ => {
                            let _ = writeln!(
                                s,
                                "      - {name} {red}<{}, {} failures>{reset}{extra}",
                                i.state, i.failures
                            );
                        }
                    }
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_running_failing_and_waiting_instances() {
        let inst = |n: &str, knot, pid, state: &str| Instance {
            n: n.into(),
            knot_pid: knot,
            pid,
            state: state.into(),
            uptime_s: Some(65),
            restarts: 0,
            failures: 2,
            mem_rss: 2 << 20,
            threads: 1,
            processes: 2,
        };
        let out = Output {
            trees: vec![Tree {
                pid: 10,
                config: "/etc/lithos/master.yaml".into(),
                usage: Usage {
                    processes: 5,
                    threads: 6,
                    rss: 3 << 20,
                },
                sandboxes: vec![Sandbox {
                    name: "demo".into(),
                    config_error: None,
                    processes: vec![Process {
                        name: "w".into(),
                        instances: vec![
                            inst("0", Some(11), Some(13), "running"),
                            inst("1", Some(12), None, "starting"),
                            inst("2", None, None, "backoff"),
                        ],
                    }],
                }],
            }],
        };
        let text = render(&out, false);
        assert!(
            text.contains("10 tree /etc/lithos/master.yaml [5/6] 3.0M"),
            "{text}"
        );
        assert!(text.contains("13 demo/w.0 1m5s [2/1] 2.0M"), "{text}");
        assert!(text.contains("(12) demo/w.1 <starting>"), "{text}");
        assert!(text.contains("- demo/w.2 <backoff, 2 failures>"), "{text}");
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            json["trees"][0]["sandboxes"][0]["processes"][0]["instances"][0]["pid"],
            13
        );
    }
}
