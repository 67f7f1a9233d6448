// The shell: routing (#/page/arg), polling, the header every page shares, messages, and the
// write flow (write buttons disabled until the token is entered, once per tab; confirmation with
// the scheduler's plan; readable refusals).

import { el, morph } from "./dom.js";
import * as api from "./api.js";
import { pages, ago, diffView, planSummary, short, when } from "./pages.js";

const POLL_MS = 1500;
const MESSAGE_MS = 10000;

const state = {
  page: "roles",
  arg: null,
  status: null,
  statusError: null,
  data: {},
  errors: {},
  messages: [],
  // Per-page UI state that survives refreshes (plan results, opened backups, follow flags).
  ui: { backups: {}, plan: null, follow: true },
};
let nextMessage = 1;
let timer = null;
let refreshing = null;

function route() {
  const hash = location.hash;
  if (!hash.startsWith("#/")) return false;
  const [page, ...rest] = hash.slice(2).split("/");
  state.page = Object.hasOwn(pages, page) ? page : "roles";
  state.arg = rest.length && rest[0] !== "" ? decodeURIComponent(rest.join("/")) : null;
  return true;
}

/** What a page needs to know about the cluster. */
function context() {
  const status = state.status;
  const leader = status && status.leader;
  const isLeader = Boolean(leader && status && leader.id === status.id);
  const isFollower = Boolean(leader && !isLeader);
  const leaderUrl = isFollower && leader.addr ? `http://${leader.addr}/${location.hash}` : null;
  // A follower's write buttons only point at the leader, so they need no token.
  const canWrite = isFollower || Boolean(api.token.get());
  return { status, arg: state.arg, ui: state.ui, isLeader, isFollower, leaderUrl, leader, canWrite };
}

/** Loads the status and the current page's data, then renders; resolves with the page. */
async function load() {
  const page = state.page;
  try {
    state.status = await api.getJson("/v1/status");
    state.statusError = null;
  } catch (err) {
    state.statusError = err.message;
  }
  try {
    state.data[page] = await pages[page].load(context(), state.data[page]);
    state.errors[page] = null;
  } catch (err) {
    state.errors[page] = err.message;
  }
  render();
  return page;
}

/** One load at a time; a navigation during a load gets its own load right after. */
async function refresh() {
  if (refreshing) {
    const loaded = await refreshing;
    if (loaded === state.page) return loaded;
    if (refreshing) return refreshing;
  }
  refreshing = load().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

function schedulePoll() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    await refresh();
    schedulePoll();
  }, POLL_MS);
}

function badge(kind, symbol, text) {
  return el("span", { class: `badge ${kind}` }, el("span", { "aria-hidden": "true" }, symbol), " ", text);
}

function header(ctx) {
  const status = ctx.status;
  const items = [];
  if (!status) {
    items.push(state.statusError ? badge("bad", "✕", `Daemon unreachable: ${state.statusError}`) : "Loading…");
    return el("header", { class: "top" }, el("p", { class: "brand" }, "verwalter"), items);
  }
  const node = `${status.name}${status.hostname && status.hostname !== status.name ? ` (${status.hostname})` : ""}`;
  let role;
  if (ctx.isLeader) role = badge("good", "★", "Leader");
  else if (ctx.isFollower) role = badge("info", "○", "Follower");
  else role = badge("warn", "▲", "No leader: electing");
  const leader = ctx.leader;
  const leaderInfo = ctx.isFollower
    ? el("p", { class: "leader", id: "leader-info" }, "Leader: ",
      el("strong", {}, leader.name || leader.hostname || short(leader.id)),
      leader.addr ? ` at ${leader.addr}` : "",
      ctx.leaderUrl ? [" · ", el("a", { href: ctx.leaderUrl, id: "leader-link" }, "Open the leader's UI")] : "")
    : el("p", { class: "leader", id: "leader-info" }, ctx.isLeader ? "This node leads the cluster." : "Waiting for a leader.");
  const stamp = leader && leader.schedule;
  const scheduleText = stamp
    ? el("span", { title: when(stamp.timestamp) }, `Schedule ${short(stamp.hash)}, ${ago(stamp.timestamp)}`)
    : "No schedule yet";
  const scheduleKind = status.schedule_status === "ok" ? "good" : "warn";
  const errors = Object.entries(status.errors || {});
  if (status.scheduler && status.scheduler.error && !errors.some(([name]) => name === "scheduler")) {
    errors.push(["scheduler", status.scheduler.error]);
  }
  for (const role of status.failed_roles || []) errors.push([`role ${role}`, "render or apply failed"]);
  const errorBox = errors.length
    ? el("div", { class: "errors", role: "alert", id: "errors" },
      el("p", {}, badge("bad", "✕", `${errors.length} error${errors.length > 1 ? "s" : ""}`)),
      el("ul", {}, errors.map(([name, text]) => el("li", { "data-key": name }, el("strong", {}, name), ": ", el("span", { class: "pre" }, text)))))
    : el("div", { class: "errors none", id: "errors" }, badge("good", "✓", "No errors"));
  let token = null;
  if (api.token.get()) {
    token = el("p", { class: "token", id: "token-state" }, "Write token kept for this tab ",
      el("button", { type: "button", "data-act": "forget-token", class: "link", "data-key": "forget" }, "Forget"));
  } else if (!ctx.isFollower) {
    token = el("p", { class: "token", id: "token-state" },
      el("span", { id: "token-hint" }, badge("warn", "⊘", "Read-only"), " enter the write token to enable actions "),
      el("button", { type: "button", "data-act": "set-token", class: "small", "data-key": "enter" }, "Enter token…"));
  }
  return el("header", { class: "top" },
    el("div", { class: "line" },
      el("p", { class: "brand" }, "verwalter ", el("span", { class: "node" }, node)),
      role,
      badge(scheduleKind, scheduleKind === "good" ? "✓" : "…", `Schedule ${status.schedule_status}`),
      status.frozen ? badge("warn", "❄", "Frozen after rollback") : null,
      state.statusError ? badge("bad", "✕", `Stale: ${state.statusError}`) : null),
    el("div", { class: "line" }, leaderInfo, el("p", { class: "age" }, scheduleText), token),
    errorBox);
}

function nav() {
  return el("nav", { "aria-label": "Pages" },
    el("ul", {}, Object.entries(pages).map(([name, page]) =>
      el("li", { "data-key": name }, el("a", { href: `#/${name}`, "aria-current": state.page === name ? "page" : null }, page.title)))));
}

function messages() {
  return el("div", { id: "messages", role: "status", "aria-live": "polite" },
    state.messages.map((m) => el("div", { class: `message ${m.kind}`, "data-key": String(m.id) },
      el("span", { "aria-hidden": "true" }, m.kind === "ok" ? "✓ " : "✕ "),
      el("span", {}, m.text),
      m.link ? [" ", el("a", { href: m.link.href }, m.link.text)] : null,
      el("button", { type: "button", class: "link", "data-act": "dismiss", "data-id": m.id, "aria-label": "Dismiss message" }, "Dismiss"))));
}

function render() {
  const ctx = context();
  morph(document.getElementById("top"), el("div", { id: "top" }, header(ctx), nav()));
  morph(document.getElementById("messages"), messages());
  const page = pages[state.page];
  const error = state.errors[state.page];
  const body = page.render(ctx, state.data[state.page], error);
  // data-loaded: the page shows data (or its error), not the first empty render.
  const loaded = state.data[state.page] !== undefined || Boolean(error);
  morph(document.getElementById("main"),
    el("main", { id: "main", tabindex: "-1", "data-page": state.page, "data-loaded": loaded }, body));
  document.title = `${page.title} · verwalter${ctx.status ? ` · ${ctx.status.name}` : ""}`;
}

function say(kind, text, link) {
  const id = nextMessage++;
  state.messages.push({ id, kind, text, link });
  if (kind === "ok") setTimeout(() => dismiss(id), MESSAGE_MS);
  render();
}

function dismiss(id) {
  state.messages = state.messages.filter((m) => m.id !== id);
  render();
}

/** Opens a dialog and resolves with its returnValue when it closes. */
function ask(dialog) {
  const opener = document.activeElement;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (opener && opener.isConnected) opener.focus();
      resolve(dialog.returnValue);
    }, { once: true });
  });
}

/** Asks for the write token; true when one was entered. */
async function askToken() {
  const input = document.getElementById("token-input");
  input.value = "";
  const answer = await ask(document.getElementById("token-dialog"));
  const value = input.value.trim();
  input.value = "";
  if (answer !== "ok" || !value) return false;
  api.token.set(value);
  render();
  // The button that opened the dialog is gone; the now enabled buttons are in the page.
  document.getElementById("main").focus();
  return true;
}

/**
 * The write flow: on a follower, point at the leader; else confirmation (with what
 * would change, when `preview` is given: an async function giving {title, body}), the POST,
 * and a message either way.
 */
async function write({ title, description, path, body, preview, done }) {
  const ctx = context();
  const dialog = document.getElementById("confirm");
  const titleEl = document.getElementById("confirm-title");
  const bodyEl = document.getElementById("confirm-body");
  const ok = document.getElementById("confirm-ok");
  if (ctx.isFollower) {
    const cancel = document.getElementById("confirm-cancel");
    titleEl.textContent = "This node is a follower";
    morph(bodyEl, el("div", { id: "confirm-body" },
      el("p", {}, `Writes are taken by the leader, ${ctx.leader.name || short(ctx.leader.id)}${ctx.leader.addr ? ` at ${ctx.leader.addr}` : ""}.`),
      ctx.leaderUrl ? el("p", {}, el("a", { href: ctx.leaderUrl }, "Continue on the leader's UI")) : null));
    ok.hidden = true;
    cancel.textContent = "Close";
    await ask(dialog);
    ok.hidden = false;
    cancel.textContent = "Cancel";
    return;
  }
  // The buttons are disabled without the token; this covers one forgotten in another way.
  if (!ctx.canWrite) {
    say("error", `Not sent: ${title} needs the write token. Enter it in the header first.`);
    return;
  }
  titleEl.textContent = title;
  ok.textContent = title;
  const previewBox = el("div", { id: "confirm-preview" }, preview ? el("p", {}, "Finding out what would change…") : null);
  morph(bodyEl, el("div", { id: "confirm-body" }, el("p", {}, description), previewBox));
  const answer = ask(dialog);
  if (preview) {
    preview()
      .then(({ title: heading, body: shown }) => [el("h3", {}, heading), shown])
      .catch((err) => el("p", {}, `Cannot tell what would change: ${err.message}`))
      .then((shown) => {
        const live = document.getElementById("confirm-preview");
        if (live) morph(live, el("div", { id: "confirm-preview" }, shown));
      });
  }
  if ((await answer) !== "ok") return;
  try {
    const result = await api.post(path, body);
    say("ok", done(result));
  } catch (err) {
    const leader = err.leader;
    const link = leader && leader.addr ? { href: `http://${leader.addr}/${location.hash}`, text: "Open the leader's UI" } : null;
    say("error", err.message, link);
  }
  await refresh();
}

function postAction(title, body) {
  return write({
    title,
    description: `Post this action to the scheduler: ${JSON.stringify(body)}`,
    path: "/v1/action", body,
    preview: async () => ({ title: "Plan", body: planSummary(await api.post("/v1/plan", body)) }),
    done: (r) => `${title}: action ${r.registered} registered${r.replicated ? " and replicated" : " (not yet on a majority)"}.`,
  });
}

const actions = {
  async "set-token"() {
    if (await askToken()) say("ok", "The write token is kept for this tab; the write buttons are enabled.");
  },
  // Not a submit button, so Enter in the token field submits "Use token".
  "close-dialog"(target) {
    target.closest("dialog").close("cancel");
  },
  skip() {
    document.getElementById("main").focus();
  },
  "forget-token"() {
    api.token.forget();
    say("ok", "The write token was forgotten; the write buttons are disabled.");
  },
  dismiss(target) {
    dismiss(Number(target.dataset.id));
  },
  action(target) {
    return postAction(target.dataset.title, JSON.parse(target.dataset.body));
  },
  "post-action-form"() {
    const field = document.getElementById("action-json");
    let body;
    try {
      body = JSON.parse(field.value);
    } catch (err) {
      say("error", `The action is not valid JSON: ${err.message}`);
      field.focus();
      return;
    }
    return postAction("Post action", body);
  },
  rollback(target) {
    const name = target.dataset.backup;
    return write({
      title: "Roll back",
      description: `Publish backup ${name} (${target.dataset.when}) as the schedule in force. ` +
        "Scheduling freezes: the scheduler keeps running but its output is only shown as a plan until you resume.",
      path: "/v1/rollback", body: { backup: name },
      preview: async () => {
        const [backup, current] = await Promise.all([
          api.getJson(`/v1/backup/${encodeURIComponent(name)}`),
          api.getJson("/v1/schedule", { missingOk: true }),
        ]);
        return { title: "Changes to the schedule in force", body: diffView(current ? current.data : null, backup.data) };
      },
      done: (r) => `Rolled back to ${name}: schedule ${short(r.hash)} in force, scheduling frozen.`,
    });
  },
  resume() {
    return write({
      title: "Resume scheduling",
      description: "Publish the scheduler's output again (ends the freeze after a rollback).",
      path: "/v1/resume", body: {},
      done: () => "Scheduling resumed.",
    });
  },
  "force-render"() {
    return write({
      title: "Render all roles",
      description: "Render and apply every role of this host again, even if nothing changed.",
      path: "/v1/force_render_all", body: {},
      done: () => "A new deployment was started.",
    });
  },
  async plan() {
    state.ui.plan = { loading: true };
    render();
    try {
      state.ui.plan = { result: await api.getJson("/v1/plan") };
    } catch (err) {
      state.ui.plan = { error: err.message };
    }
    render();
  },
  async "view-backup"(target) {
    const name = target.dataset.backup;
    const open = state.ui.backups[name];
    if (open) {
      delete state.ui.backups[name];
    } else {
      state.ui.backups[name] = { loading: true };
      render();
      try {
        state.ui.backups[name] = { schedule: await api.getJson(`/v1/backup/${encodeURIComponent(name)}`) };
      } catch (err) {
        state.ui.backups[name] = { error: err.message };
      }
    }
    render();
  },
  follow() {
    state.ui.follow = !state.ui.follow;
    render();
  },
};

document.addEventListener("click", (event) => {
  const target = event.target.closest("[data-act]");
  if (!target || !Object.hasOwn(actions, target.dataset.act)) return;
  event.preventDefault();
  Promise.resolve(actions[target.dataset.act](target)).catch((err) => say("error", err.message));
});

window.addEventListener("hashchange", () => {
  if (!route()) return;
  render();
  document.querySelector("main h1")?.focus();
  refresh().then(schedulePoll);
});

route();
if (!location.hash.startsWith("#/")) history.replaceState(null, "", "#/roles");
render();
refresh().then(schedulePoll);
