// The pages: each loads what it shows (given the previous load, to follow logs and cache
// backups) and renders it. Every state is written in words and a symbol, never colour alone.

import { el } from "./dom.js";
import * as api from "./api.js";

const decoder = new TextDecoder();

/** The first 8 characters of a hash or id. */
export function short(id) {
  return id ? String(id).slice(0, 8) : "—";
}

/** "12 s ago" for a ms timestamp. */
export function ago(ms) {
  if (!ms) return "never";
  const seconds = Math.round((Date.now() - ms) / 1000);
  if (seconds < 2) return "just now";
  if (seconds < 120) return `${seconds} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}

/** A readable absolute time. */
export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "never";
}

function badge(kind, symbol, text) {
  return el("span", { class: `badge ${kind}` }, el("span", { "aria-hidden": "true" }, symbol), " ", text);
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function heading(title, ...extra) {
  return el("div", { class: "page-head" }, el("h1", { tabindex: "-1" }, title), extra);
}

function failure(error) {
  return error ? el("p", { class: "message error", role: "alert" }, el("span", { "aria-hidden": "true" }, "✕ "), error) : null;
}

function followerNote(ctx) {
  if (!ctx.isFollower) return null;
  return el("p", { class: "note" }, el("strong", {}, "Follower: "),
    "writes are taken by the leader; the buttons below take you there",
    ctx.leaderUrl ? [" (", el("a", { href: ctx.leaderUrl }, "open the leader's UI"), ")."] : ".");
}

/**
 * A button that writes. Without the write token it is disabled and described by the header's
 * read-only hint; on a follower it stays enabled, as it only points at the leader.
 */
function writeButton(ctx, attrs, ...children) {
  const locked = !ctx.canWrite;
  return el("button", { type: "button", ...attrs, disabled: locked, "aria-describedby": locked ? "token-hint" : null }, ...children);
}

function frozenNote(ctx, consequence) {
  if (!ctx.status || !ctx.status.frozen) return null;
  return el("div", { class: "note warn", id: "frozen-note" },
    el("p", {}, badge("warn", "❄", "Frozen"), " A rollback is in force: the scheduler runs, but its output is not published",
      consequence ? `; ${consequence}` : "", "."),
    writeButton(ctx, { "data-act": "resume" }, "Resume scheduling…"));
}

function dl(pairs) {
  return el("dl", {}, pairs.filter(Boolean).map(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

function empty(text) {
  return el("p", { class: "empty" }, text);
}

/** A role's buttons from the schedule: a list of {title, action} or {name: {title, action}}. */
function roleButtons(ctx, role, buttons) {
  if (!buttons || typeof buttons !== "object") return [];
  const entries = Array.isArray(buttons) ? buttons.map((b, i) => [String(i), b]) : Object.entries(buttons);
  return entries.map(([name, button]) => {
    const spec = button && typeof button === "object" ? button : {};
    const title = spec.title || spec.label || name;
    const action = spec.action ?? { button: name, role };
    return writeButton(ctx, {
      "data-act": "action", "data-title": title, "data-body": JSON.stringify(action), "data-key": name,
    }, `${title}…`);
  });
}

function roleVersion(nodes) {
  const versions = new Map();
  for (const [host, vars] of Object.entries(nodes)) {
    const version = vars.version ?? vars.image ?? vars.template ?? "—";
    const key = typeof version === "string" ? version : JSON.stringify(version);
    versions.set(key, [...(versions.get(key) || []), host]);
  }
  if (versions.size <= 1) return [...versions.keys()][0] || "—";
  return [...versions].map(([version, hosts]) => `${version} on ${hosts.join(", ")}`).join("; ");
}

function roleState(info, ctx) {
  if (info.failed_on && info.failed_on.length) return badge("bad", "✕", `Failed on ${info.failed_on.join(", ")}`);
  const last = info.last_deployment;
  const here = ctx.status && ctx.status.hostname;
  if (!last) {
    return Object.hasOwn(info.nodes, here) ? badge("warn", "…", "Not rendered here yet") : badge("info", "○", "Not on this host");
  }
  return last.ok
    ? badge("good", "✓", `Deployed ${ago(last.timestamp)}`)
    : badge("bad", "✕", `Failed here (exit ${last.exit_code ?? "?"})`);
}

const roles = {
  title: "Roles",
  load: () => api.getJson("/v1/roles_data"),
  render(ctx, data, error) {
    const names = Object.keys(data || {});
    return [
      heading("Roles"),
      failure(error),
      followerNote(ctx),
      frozenNote(ctx),
      data && !names.length ? empty("The schedule places no roles yet.") : null,
      el("div", { class: "cards" }, names.map((name) => {
        const info = data[name];
        const hosts = Object.keys(info.nodes);
        const buttons = roleButtons(ctx, name, info.buttons);
        return el("section", { class: "card", "data-key": name, "aria-labelledby": `role-${name}` },
          el("h2", { id: `role-${name}` }, name),
          el("p", {}, roleState(info, ctx)),
          dl([
            ["Version", el("span", { class: "version" }, roleVersion(info.nodes))],
            ["Hosts", hosts.length ? hosts.join(", ") : "none"],
            info.last_deployment ? ["Last deployment here", `${info.last_deployment.deployment_id} (${when(info.last_deployment.timestamp)})`] : null,
          ]),
          buttons.length ? el("div", { class: "buttons" }, buttons) : el("p", { class: "empty" }, "The schedule offers no actions for this role."),
          hosts.length ? el("details", {}, el("summary", {}, "Variables per host"),
            hosts.map((host) => el("div", { "data-key": host }, el("h3", {}, host), el("pre", {}, pretty(info.nodes[host]))))) : null);
      })),
    ];
  },
};

function peerState(state) {
  switch (state) {
    case "alive": return badge("good", "●", "Alive");
    case "suspect": return badge("warn", "▲", "Suspect");
    case "dead": return badge("bad", "✕", "Dead");
    default: return badge("info", "?", state || "unknown");
  }
}

const peers = {
  title: "Peers",
  load: () => api.getJson("/v1/peers"),
  render(ctx, data, error) {
    const list = [...(data || [])].sort((a, b) => a.hostname.localeCompare(b.hostname));
    const leaderId = ctx.leader && ctx.leader.id;
    return [
      heading("Peers"),
      failure(error),
      data && !list.length ? empty("cantal reports no peers (is cantal-agent running?).") : null,
      el("div", { class: "cards" }, list.map((peer) => el("section", { class: "card", "data-key": peer.id, "aria-labelledby": `peer-${peer.id}` },
        el("h2", { id: `peer-${peer.id}` }, peer.name || peer.hostname, peer.id === leaderId ? [" ", badge("good", "★", "Leader")] : null),
        el("p", {}, peerState(peer.state)),
        dl([
          ["Hostname", peer.hostname],
          ["Address", peer.primary_addr || "—"],
          ["Id", el("code", { title: peer.id }, short(peer.id))],
          ["Last report", peer.last_report_direct ? el("span", { title: when(peer.last_report_direct) }, ago(peer.last_report_direct)) : "never"],
          ["Known since", when(peer.known_since)],
          ["Schedule", peer.schedule ? el("code", { title: peer.schedule.hash }, short(peer.schedule.hash)) : "— (reported to the leader only)"],
          ["Errors", peer.errors ? badge("bad", "✕", String(peer.errors)) : badge("good", "✓", "none")],
          ["Failed roles", peer.failed_roles && peer.failed_roles.length ? badge("bad", "✕", peer.failed_roles.join(", ")) : "none"],
        ])))),
    ];
  },
};

/** Line diff of two texts (LCS), as [op, line] with op " ", "-" or "+". */
function diffLines(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  const lcs = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      out.push([" ", a[i++]]);
      j++;
    } else if (i < a.length && (j === b.length || lcs[i + 1][j] >= lcs[i][j + 1])) {
      out.push(["-", a[i++]]);
    } else {
      out.push(["+", b[j++]]);
    }
  }
  return out;
}

/** Only changed lines with two lines of context around them. */
export function diffView(before, after) {
  const lines = diffLines(pretty(before), pretty(after));
  const keep = lines.map((_, n) => lines.slice(Math.max(0, n - 2), n + 3).some(([op]) => op !== " "));
  if (!keep.includes(true)) return empty("No difference.");
  const out = [];
  lines.forEach(([op, line], n) => {
    if (!keep[n]) {
      if (out.length && out[out.length - 1] !== "…") out.push("…");
      return;
    }
    const label = op === "+" ? "added" : op === "-" ? "removed" : null;
    out.push(el("span", { class: label ? `diff-${label}` : null }, label ? el("span", { class: "sr" }, `${label}: `) : null, `${op} ${line}\n`));
  });
  return el("pre", { class: "diff" }, out.map((part) => (part === "…" ? "…\n" : part)));
}

/** A plan's hosts and what would change on each. */
export function planSummary(result) {
  const hosts = Object.entries(result.hosts || {});
  if (!hosts.length) return empty("No host would change.");
  return el("ul", { class: "plan" }, hosts.map(([host, diff]) => el("li", { "data-key": host },
    el("strong", {}, host), ": ",
    diff.added.length ? `adds ${diff.added.join(", ")}; ` : "",
    diff.removed.length ? `removes ${diff.removed.join(", ")}; ` : "",
    Object.entries(diff.changed).map(([role, vars]) => `${role}: ${Object.entries(vars)
      .map(([name, change]) => `${name} ${JSON.stringify(change.old)} → ${JSON.stringify(change.new)}`).join(", ")}; `))));
}

function planView(plan, current) {
  if (!plan) return null;
  if (plan.loading) return el("p", {}, "Asking the scheduler…");
  if (plan.error) return failure(`No plan: ${plan.error}`);
  return el("div", { id: "plan" },
    el("p", {}, `Next schedule would be ${short(plan.result.hash)}${current && plan.result.hash === current.hash ? " (the one in force)" : ""}.`),
    planSummary(plan.result),
    current ? el("details", {}, el("summary", {}, "Difference from the schedule in force"), diffView(current.data, plan.result.schedule)) : null);
}

async function cachedBackup(name, previous) {
  if (previous && previous.name === name) return previous;
  return { name, schedule: await api.getJson(`/v1/backup/${encodeURIComponent(name)}`, { missingOk: true }) };
}

const schedule = {
  title: "Schedule",
  async load(ctx, previous) {
    // Before the first schedule /v1/schedule is a 404, which the browser logs as an error.
    const [current, backups, files] = await Promise.all([
      ctx.status && ctx.status.schedule_id ? api.getJson("/v1/schedule", { missingOk: true }) : null,
      api.getJson("/v1/backups"),
      api.getJson("/v1/log_files"),
    ]);
    const changesFile = files.changes[files.changes.length - 1];
    const changesLog = changesFile ? await api.getLog(`/v1/log/changes/${changesFile}`, -8192) : null;
    const changes = changesLog ? decoder.decode(changesLog.bytes) : "";
    let earlier = null;
    if (current) {
      // Backups come newest first; the schedule before this one is the next distinct hash.
      const older = backups.find((b) => b.name.startsWith("recent-") && b.hash !== current.hash && b.timestamp <= current.timestamp)
        || backups.find((b) => b.hash !== current.hash);
      if (older) earlier = await cachedBackup(older.name, previous && previous.earlier);
    }
    return { current, earlier, changes };
  },
  render(ctx, data, error) {
    const current = data && data.current;
    return [
      heading("Schedule"),
      failure(error),
      frozenNote(ctx),
      data && !current ? empty("No schedule yet: the leader has not published one.") : null,
      current ? dl([
        ["Hash", el("code", { id: "schedule-hash" }, current.hash)],
        ["Published", el("span", { title: when(current.timestamp) }, `${when(current.timestamp)} (${ago(current.timestamp)})`)],
        ["Origin", el("code", {}, short(current.origin))],
        current.rollback_of ? ["Rollback of", current.rollback_of] : null,
        ["Pending actions", String(Object.keys(current.pending_actions || {}).length)],
      ]) : null,
      current ? el("section", { "aria-labelledby": "changes-title" },
        el("h2", { id: "changes-title" }, "Changes in this schedule"),
        Array.isArray(current.data.changes) && current.data.changes.length
          ? el("ul", {}, current.data.changes.map((line, n) => el("li", { "data-key": String(n) }, String(line))))
          : empty("The scheduler listed no changes.")) : null,
      el("section", { "aria-labelledby": "changelog-title" },
        el("h2", { id: "changelog-title" }, "Changes log"),
        data && data.changes ? el("pre", { class: "log" }, tailLines(data.changes, 30)) : empty("No changes logged yet.")),
      current && data.earlier && data.earlier.schedule ? el("section", { "aria-labelledby": "diff-title" },
        el("h2", { id: "diff-title" }, `Difference from the previous schedule (${data.earlier.name})`),
        diffView(data.earlier.schedule.data, current.data)) : null,
      ctx.isLeader ? el("section", { "aria-labelledby": "plan-title" },
        el("h2", { id: "plan-title" }, "Plan"),
        el("p", {}, "What the scheduler would publish now, without publishing it."),
        el("button", { type: "button", "data-act": "plan" }, "Compute the plan"),
        planView(ctx.ui.plan, current)) : null,
      current ? el("details", {}, el("summary", {}, "The whole schedule (JSON)"), el("pre", { id: "schedule-json" }, pretty(current.data))) : null,
    ];
  },
};

function tailLines(text, count) {
  const lines = text.replace(/\n$/, "").split("\n");
  return lines.slice(Math.max(0, lines.length - count)).join("\n");
}

// Deployment logs: index lines are [time, deployment_id, pointer, marker].
function pointerUrl(pointer) {
  const [a, b] = pointer.fields;
  switch (pointer.variant) {
    case "Global": return { key: `global/${a}`, url: `/v1/log/global/${a}`, offset: b, label: "Daemon" };
    case "Changes": return { key: `changes/${a}`, url: `/v1/log/changes/${a}`, offset: b, label: "Changes" };
    case "Role": return { key: `role/${a}/${b}`, url: `/v1/log/role/${a}/${b}`, offset: pointer.fields[2], label: `Role ${a}` };
    case "External": return { key: `external/${a}`, url: `/v1/log/external/${a}`, offset: b, label: `External ${a}` };
    default: return null;
  }
}

function markerName(marker) {
  return typeof marker === "string" ? marker : `${marker.variant} ${marker.fields.join(" ")}`;
}

function deploymentsFromIndex(text) {
  const groups = new Map();
  const starts = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    let entry;
    try {
      entry = JSON.parse(line);
    } catch {
      continue;
    }
    const [time, id, pointer, marker] = entry;
    const where = pointerUrl(pointer);
    if (!groups.has(id)) groups.set(id, { id, time, events: [], finished: false, failed: false, roles: new Set() });
    const group = groups.get(id);
    const name = markerName(marker);
    group.events.push({ time, name, where });
    if (name === "DeploymentFinish") group.finished = true;
    if (name === "DeploymentError") group.failed = group.finished = true;
    if (pointer.variant === "Role") group.roles.add(pointer.fields[0]);
    if (where) starts.push({ id, ...where });
  }
  return { groups: [...groups.values()].reverse(), starts };
}

/** Each log file a deployment wrote to, with where its part starts and ends. */
function logParts(deployment, starts) {
  const parts = new Map();
  for (const { where } of deployment.events) {
    if (!where) continue;
    const part = parts.get(where.key);
    if (!part || where.offset < part.from) parts.set(where.key, { ...where, from: where.offset });
  }
  for (const part of parts.values()) {
    // The part ends where a later deployment starts writing to the same file.
    const later = starts.filter((s) => s.key === part.key && s.id !== deployment.id && s.offset > part.from);
    part.end = later.length ? Math.min(...later.map((s) => s.offset)) : null;
  }
  return [...parts.values()];
}


const deployments = {
  title: "Deployments",
  async load(ctx, previous) {
    // The index has one file per day: the last two cover at least the past day.
    const files = (await api.getJson("/v1/log_files")).index.slice(-2);
    const texts = await Promise.all(files.map((name) => api.getLog(`/v1/log/index/${name}`)));
    const { groups, starts } = deploymentsFromIndex(texts.map((t) => (t ? decoder.decode(t.bytes) : "")).join("\n"));
    const selected = groups.find((g) => g.id === ctx.arg) || null;
    const logs = {};
    if (selected) {
      const before = previous && previous.selected && previous.selected.id === selected.id ? previous.logs : {};
      for (const part of logParts(selected, starts)) {
        const known = before[part.key] || { text: "", next: part.from, label: part.label };
        const log = { ...known };
        const finished = part.end !== null && log.next >= part.end;
        // Follow a running deployment: fetch only what was appended since the last poll.
        if (!finished && (ctx.ui.follow || !known.text)) {
          const chunk = await api.getLog(part.url, log.next);
          if (chunk && chunk.bytes.length) {
            let bytes = chunk.bytes;
            if (part.end !== null) bytes = bytes.subarray(0, Math.max(0, part.end - log.next));
            log.text += decoder.decode(bytes);
            log.next += bytes.length;
          }
        }
        logs[part.key] = log;
      }
    }
    return { groups, selected, logs };
  },
  render(ctx, data, error) {
    const groups = data ? data.groups.slice(0, 50) : [];
    const selected = data && data.selected;
    const result = (g) => (g.failed ? badge("bad", "✕", "Error") : g.finished ? badge("good", "✓", "Finished") : badge("warn", "…", "Running"));
    return [
      heading("Deployments"),
      failure(error),
      el("p", {}, "This host's deployments since yesterday, newest first. ",
        writeButton(ctx, { "data-act": "force-render" }, "Render all roles again…")),
      data && !groups.length ? empty("No deployment logged since yesterday.") : null,
      selected ? el("section", { "aria-labelledby": "deployment-title", id: "deployment" },
        el("h2", { id: "deployment-title" }, `Deployment ${selected.id} `, result(selected)),
        el("p", {}, el("a", { href: "#/deployments" }, "Back to the list"), " · ",
          el("button", { type: "button", "data-act": "follow", "aria-pressed": ctx.ui.follow ? "true" : "false" },
            ctx.ui.follow ? "Following the log (pause)" : "Paused (follow the log)")),
        el("ol", { class: "events" }, selected.events.map((e, n) => el("li", { "data-key": String(n) }, el("time", {}, e.time.slice(11, 23)), " ", e.name))),
        Object.entries(data.logs).map(([key, log]) => el("div", { "data-key": key },
          el("h3", {}, log.label),
          el("pre", { class: "log", "aria-live": selected.finished ? null : "polite" }, log.text || "(empty)")))) : null,
      groups.length ? el("div", { class: "table" }, el("table", {},
        el("caption", { class: "sr" }, "Deployments"),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Started"), el("th", { scope: "col" }, "Deployment"), el("th", { scope: "col" }, "Roles"), el("th", { scope: "col" }, "Result"))),
        el("tbody", {}, groups.map((g) => el("tr", { "data-key": g.id, class: selected && selected.id === g.id ? "selected" : null },
          el("td", {}, el("time", {}, g.time.slice(11, 19))),
          el("td", {}, el("a", { href: `#/deployments/${encodeURIComponent(g.id)}` }, g.id)),
          el("td", {}, [...g.roles].join(", ") || "—"),
          el("td", {}, result(g))))))) : null,
    ];
  },
};

const actions = {
  title: "Actions",
  load: () => api.getJson("/v1/pending_actions"),
  render(ctx, data, error) {
    const pending = Object.entries(data || {});
    return [
      heading("Actions"),
      failure(error),
      followerNote(ctx),
      frozenNote(ctx, "pending actions wait until scheduling resumes"),
      el("section", { "aria-labelledby": "pending-title" },
        el("h2", { id: "pending-title" }, "Pending actions"),
        el("p", {}, "Registered, not yet consumed by a published schedule."),
        data && !pending.length ? empty("None: every action was consumed by a published schedule.") : null,
        el("ul", { class: "pending" }, pending.map(([id, action]) => el("li", { "data-key": id },
          el("time", { title: id }, when(Number(id))), " ", el("code", {}, JSON.stringify(action)))))),
      el("section", { "aria-labelledby": "post-title" },
        el("h2", { id: "post-title" }, "Post an action"),
        el("label", { for: "action-json" }, "Action (JSON, passed to the scheduler as is)"),
        el("textarea", { id: "action-json", rows: "4", spellcheck: "false" }, '{"button": ""}'),
        el("div", { class: "buttons" }, writeButton(ctx, { "data-act": "post-action-form" }, "Review and post…"))),
    ];
  },
};

function backupView(view, current) {
  if (view.loading) return el("p", {}, "Loading…");
  if (view.error) return failure(view.error);
  return el("div", {},
    current ? [el("h3", {}, "Difference from the schedule in force"), diffView(current.data, view.schedule.data)] : null,
    el("details", {}, el("summary", {}, "The whole backup (JSON)"), el("pre", {}, pretty(view.schedule.data))));
}

const backups = {
  title: "Backups",
  async load(ctx) {
    const list = await api.getJson("/v1/backups");
    // An opened backup is compared with the schedule in force.
    const opened = Object.keys(ctx.ui.backups).length > 0;
    const current = opened && ctx.status && ctx.status.schedule_id ? await api.getJson("/v1/schedule", { missingOk: true }) : null;
    return { list, current };
  },
  render(ctx, data, error) {
    const list = data ? data.list : [];
    const current = ctx.status && ctx.status.schedule_id;
    return [
      heading("Backups"),
      failure(error),
      followerNote(ctx),
      frozenNote(ctx),
      el("p", {}, "Rolling back publishes the backup as the schedule in force and freezes scheduling until you resume."),
      data && !list.length ? empty("No backups yet.") : null,
      el("ul", { class: "backups" }, list.map((b) => {
        const view = ctx.ui.backups[b.name];
        const inForce = b.hash === current;
        return el("li", { class: "card", "data-key": b.name, "data-backup": b.name },
          el("div", { class: "row" },
            el("strong", {}, b.name),
            el("span", { title: when(b.timestamp) }, ago(b.timestamp)),
            el("code", { title: b.hash }, short(b.hash)),
            inForce ? badge("good", "✓", "In force") : null),
          el("div", { class: "buttons" },
            el("button", { type: "button", "data-act": "view-backup", "data-backup": b.name, "aria-expanded": view ? "true" : "false" }, view ? "Hide" : "View"),
            writeButton(ctx, { class: "danger", "data-act": "rollback", "data-backup": b.name, "data-when": when(b.timestamp) }, "Roll back…")),
          view ? backupView(view, data.current) : null);
      })),
    ];
  },
};

const election = {
  title: "Election",
  load: () => api.getJson("/v1/election"),
  render(ctx, data, error) {
    const leader = ctx.leader;
    const stateName = data && data.state && typeof data.state === "object" ? data.state.state : data && data.state;
    return [
      heading("Election"),
      failure(error),
      data ? dl([
        ["State", stateName || "—"],
        ["Epoch", String(data.epoch)],
        ["Leader", leader ? `${leader.name || short(leader.id)}${leader.addr ? ` at ${leader.addr}` : " (this node)"}` : "none"],
        ["Votes", data.votes === null || data.votes === undefined ? "— (not electing)" : `${data.votes} of ${data.needed} needed`],
        ["Quorum", `${data.needed} node${data.needed === 1 ? "" : "s"}`],
        data.followers !== undefined ? ["Followers", Array.isArray(data.followers) ? (data.followers.join(", ") || "none") : String(data.followers)] : null,
        ["Last stable", data.last_stable_timestamp ? `${when(data.last_stable_timestamp)} (${ago(data.last_stable_timestamp)})` : "never"],
      ]) : null,
      data ? el("details", {}, el("summary", {}, "Raw election state (JSON)"), el("pre", {}, pretty(data))) : null,
    ];
  },
};

export const pages = { roles, peers, schedule, deployments, actions, backups, election };
