// Building and updating the page without flicker: every render builds fresh elements with
// `el`, then `morph` changes the live DOM only where it differs, so focus, scroll position,
// open <details> and half-typed inputs survive the once-a-second refresh.
// Behaviour is attached by `data-act` attributes and one delegated listener (app.js), so a
// morph never needs to compare event handlers.

/** An element: `el("a", {href: "#/roles"}, "Roles")`. null/false attributes and children are skipped. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Makes `live`'s attributes and children equal to `fresh`'s, reusing live nodes. */
export function morph(live, fresh) {
  syncAttributes(live, fresh);
  syncChildren(live, fresh);
}

function keyOf(node) {
  return node.nodeType === Node.ELEMENT_NODE ? node.getAttribute("data-key") : null;
}

function sameKind(a, b) {
  if (a.nodeType !== b.nodeType) return false;
  return a.nodeType !== Node.ELEMENT_NODE || a.tagName === b.tagName;
}

function syncChildren(live, fresh) {
  const keyed = new Map();
  for (const child of live.childNodes) {
    const key = keyOf(child);
    if (key !== null) keyed.set(key, child);
  }
  let cursor = live.firstChild;
  for (const next of [...fresh.childNodes]) {
    const key = keyOf(next);
    let match = null;
    if (key !== null) {
      const candidate = keyed.get(key);
      if (candidate && sameKind(candidate, next)) match = candidate;
      keyed.delete(key);
    } else if (cursor && keyOf(cursor) === null && sameKind(cursor, next)) {
      match = cursor;
    }
    if (match === null) {
      live.insertBefore(next, cursor);
      continue;
    }
    if (match === cursor) cursor = cursor.nextSibling;
    else live.insertBefore(match, cursor);
    update(match, next);
  }
  while (cursor) {
    const after = cursor.nextSibling;
    live.removeChild(cursor);
    cursor = after;
  }
}

function update(live, fresh) {
  if (live.nodeType !== Node.ELEMENT_NODE) {
    if (live.nodeValue !== fresh.nodeValue) live.nodeValue = fresh.nodeValue;
    return;
  }
  syncAttributes(live, fresh);
  // What the operator typed or chose belongs to them, not to the next refresh.
  if (live.matches("input, textarea, select")) return;
  syncChildren(live, fresh);
}

function syncAttributes(live, fresh) {
  // The operator opens and closes <details>; the render only sets the initial state.
  const details = live.tagName === "DETAILS";
  const keep = details ? (live.hasAttribute("data-seen") ? ["open", "data-seen"] : ["data-seen"]) : [];
  for (const { name } of [...live.attributes]) {
    if (!fresh.hasAttribute(name) && !keep.includes(name)) live.removeAttribute(name);
  }
  for (const { name, value } of fresh.attributes) {
    if (keep.includes(name)) continue;
    if (live.getAttribute(name) !== value) live.setAttribute(name, value);
  }
  if (details && !live.hasAttribute("data-seen")) live.setAttribute("data-seen", "");
}
