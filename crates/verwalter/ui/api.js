// The /v1 API as the UI uses it: reads, writes with the session's token, and refusals
// turned into sentences an operator can act on.

const TOKEN_KEY = "verwalter-token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  forget: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** A request the daemon (or the network) refused. */
export class Refused extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
  /** The leader named by a 503 `not_leader`, if any: {id, name, addr}. */
  get leader() {
    return this.body && this.body.error === "not_leader" ? this.body.leader : null;
  }
}

async function send(method, path, options = {}) {
  let response;
  try {
    response = await fetch(path, { method, cache: "no-store", ...options });
  } catch (err) {
    throw new Refused(0, `the daemon did not answer (${err.message})`, null);
  }
  return response;
}

async function bodyOf(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** GET a JSON route; 404 → null when `missingOk`. */
export async function getJson(path, { missingOk = false } = {}) {
  const response = await send("GET", path);
  if (response.status === 404 && missingOk) return null;
  const body = await bodyOf(response);
  if (!response.ok) throw new Refused(response.status, explain(response.status, body), body);
  return body;
}

/**
 * A log file from byte `from` on: `{bytes, total}`, or null when the file does not exist.
 * A negative `from` gives the last -from bytes.
 */
export async function getLog(path, from) {
  // Asking from one byte earlier keeps the range satisfiable when nothing was appended (the
  // daemon answers 416 to a range at the end, and the browser logs every 416 as an error).
  const overlap = from > 0 ? 1 : 0;
  let range = null;
  if (from < 0) range = `bytes=${from}`;
  else if (from > 0) range = `bytes=${from - overlap}-`;
  const response = await send("GET", path, { headers: range ? { Range: range } : {} });
  if (response.status === 404) return null;
  if (!response.ok) throw new Refused(response.status, explain(response.status, await bodyOf(response)), null);
  const body = new Uint8Array(await response.arrayBuffer());
  const [, total] = (response.headers.get("Content-Range") || "").match(/\/(\d+)$/) || [];
  if (response.status === 206 && overlap) return { bytes: body.subarray(overlap), total: Number(total) };
  return { bytes: body, total: total === undefined ? body.length : Number(total) };
}

/** POST JSON with the token. Throws Refused with a readable message. */
export async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  const saved = token.get();
  if (saved) headers.Authorization = `Bearer ${saved}`;
  const response = await send("POST", path, { headers, body: JSON.stringify(body ?? {}) });
  const answer = response.status === 204 ? null : await bodyOf(response);
  if (!response.ok) {
    if (response.status === 401) token.forget();
    throw new Refused(response.status, explain(response.status, answer), answer);
  }
  return answer;
}

/** What a refusal means for the operator. */
export function explain(status, body) {
  const detail = body && typeof body === "object" && typeof body.error === "string" ? body.error : "";
  switch (status) {
    case 401:
      return "Refused: the write token is missing or wrong. It was forgotten and the write buttons are disabled until you enter it again.";
    case 415:
      return "Refused: the request was not sent as JSON (415). This is a UI bug; please report it.";
    case 429:
      return "Refused: more than 1000 actions per second (429). Wait a moment and try again.";
    case 503: {
      if (detail === "not_leader") {
        const leader = body.leader;
        return leader
          ? `Refused: this node is not the leader. The leader is ${leader.name || leader.id}${leader.addr ? ` at ${leader.addr}` : ""}.`
          : "Refused: this node is not the leader and no leader is known yet. Wait for an election.";
      }
      return `Unavailable (503): ${detail || "try again"}`;
    }
    case 400:
      return `Refused as invalid (400): ${detail}`;
    case 404:
      return `Not found: ${detail || "no such resource"}`;
    case 422:
      return `The scheduler failed: ${detail}`;
    default:
      return `Failed (${status}): ${detail || (typeof body === "string" ? body.slice(0, 200) : "")}`;
  }
}
