// The keyroll dashboard: one module that draws the page the path names from the /v1 JSON API,
// authenticated by the session cookie, and redraws it every few seconds so a rotation can be
// watched live. Text is set with textContent only (no markup from data); state is always shown
// in words next to its colour.
import { adoptionChart } from "./chart.js";

const REFRESH_MS = 3000;
const PAGE_SIZE = 50;

function csrf() {
  const m = document.cookie.split(";").map((c) => c.trim()).find((c) => c.startsWith("keyroll_csrf="));
  return m ? m.slice("keyroll_csrf=".length) : "";
}

class Failure extends Error {}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) {
    location.assign("/ui/login");
    throw new Failure("session ended");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Failure(`${body.code || r.status}: ${body.detail || r.statusText}`);
  return body;
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf(), Accept: "application/json" },
    body: JSON.stringify(body || {}),
  });
  const answer = await r.json().catch(() => ({}));
  if (r.status === 401) location.assign("/ui/login");
  if (!r.ok) throw new Failure(`${answer.code || r.status}: ${answer.detail || r.statusText}`);
  return answer;
}

// el("td", {class: "x"}, "text", child, …)
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const badge = (word, code) => el("span", { class: `badge s-${code || word}` }, word);

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}

function consumerLink(ref, text) {
  const [env, name] = ref.split("/");
  return el("a", { href: `/ui/consumer/${encodeURIComponent(env)}/${encodeURIComponent(name)}` }, text || ref);
}

const when = (t) => (t ? t.replace("T", " ").replace(/\.\d+Z$/, "Z") : "—");

// A list with a search box and pages, so a page stays readable with a million entries.
function paged(id, items, match, render, headers) {
  const state = paged.state[id] || (paged.state[id] = { q: "", page: 0 });
  const box = el("div", { id });
  const draw = () => {
    const shown = items.filter((it) => !state.q || match(it).toLowerCase().includes(state.q.toLowerCase()));
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    const slice = shown.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
    const search = el("input", { type: "search", id: `${id}-search`, value: state.q, "aria-label": "Search" });
    search.addEventListener("input", () => { state.q = search.value; state.page = 0; draw(); search.focus(); });
    box.replaceChildren(
      el("div", { class: "pager" },
        el("label", { for: `${id}-search` }, "Search "), search,
        el("button", { type: "button", disabled: state.page === 0, onclick: () => { state.page--; draw(); } }, "Previous"),
        el("span", {}, `page ${state.page + 1} of ${pages} (${shown.length} of ${items.length})`),
        el("button", { type: "button", disabled: state.page >= pages - 1, onclick: () => { state.page++; draw(); } }, "Next")),
      table(headers, slice.map(render)));
  };
  draw();
  return box;
}
paged.state = {};

// ---- Overview -----------------------------------------------------------------------------

// The overview's consumer list is paged and searched by the server (`/v1/status?q=&offset=&
// limit=`), so a million versions cost one page per refresh, not one giant table.
const consumerList = { q: "", page: 0 };

function consumersPage(page) {
  const state = consumerList;
  const pages = Math.max(1, Math.ceil(page.matched / PAGE_SIZE));
  // What is typed survives the 3-second redraws; it is searched for on Enter or on leaving the box.
  const search = el("input", { type: "search", id: "consumers-search", value: state.draft ?? state.q, "aria-label": "Search consumers" });
  const commit = () => { if (search.value !== state.q) { state.q = search.value; state.page = 0; refresh(); } };
  search.addEventListener("input", () => { state.draft = search.value; });
  search.addEventListener("change", commit);
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") commit(); });
  return el("div", { id: "consumers" },
    el("div", { class: "pager" },
      el("label", { for: "consumers-search" }, "Search "), search,
      el("button", { type: "button", id: "consumers-prev", disabled: state.page === 0, onclick: () => { state.page--; refresh(); } }, "Previous"),
      el("span", { id: "consumers-page" }, `page ${state.page + 1} of ${pages} (${page.items.length} shown of ${page.matched})`),
      el("button", { type: "button", id: "consumers-next", disabled: state.page >= pages - 1, onclick: () => { state.page++; refresh(); } }, "Next")),
    table(["Consumer", "Owner", "Verdict", "Versions"], page.items.map((c) => el("tr", {},
      el("td", {}, consumerLink(c.consumer)),
      el("td", {}, c.owner || "—"),
      el("td", {}, badge(c.verdict_code.replace(/_/g, " "), c.verdict_code), " ", c.verdict),
      el("td", {}, c.versions.map((v) => `v${v.version} ${v.state}`).join(", "))))));
}

async function overview() {
  const list = new URLSearchParams({ offset: String(consumerList.page * PAGE_SIZE), limit: String(PAGE_SIZE) });
  if (consumerList.q) list.set("q", consumerList.q);
  const [envs, status, decisions, page] = await Promise.all([
    api("/v1/environments"),
    api("/v1/status?attention=true&limit=1000"),
    api("/v1/decisions?since=1h&limit=1000"),
    api(`/v1/status?${list}`),
  ]);
  const consumers = status.items;
  const stalled = consumers.filter((c) => c.verdict_code === "stalled");
  const rotating = consumers.filter((c) => c.versions.some((v) => v.state === "retiring"));
  const unseen = consumers.filter((c) => c.delivery && c.delivery.warnings && c.delivery.warnings.length);
  const due = consumers.filter((c) => c.schedule && (c.schedule.state === "due" || c.schedule.state === "blocked"));
  const byCode = new Map();
  for (const d of decisions.items) if (d.decision === "rejected") byCode.set(d.code, (byCode.get(d.code) || 0) + 1);

  const out = [el("h1", {}, "Overview")];
  out.push(el("h2", {}, "Stalls"));
  if (!stalled.length) out.push(el("p", { id: "no-stalls" }, "No rotation is stalled."));
  for (const c of stalled) {
    const old = c.versions.filter((v) => v.state === "retiring");
    out.push(el("div", { class: "stall", id: `stall-${c.consumer}`, role: "alert" },
      el("strong", {}, badge("stalled"), " ", consumerLink(c.consumer)), " — ", c.verdict,
      el("ul", {}, old.flatMap((v) => v.sources.map((s) =>
        el("li", {}, `v${v.version} still used by ${s.address}${s.user_agent ? ` (${s.user_agent})` : ""}${s.client_id ? ` client ${s.client_id}` : ""}: ${s.count} requests, last ${when(s.last_seen)}`))))));
  }
  out.push(el("h2", {}, "Rotations in progress"));
  out.push(rotating.length
    ? table(["Consumer", "Phase", "Retiring", "Deadline", "Old version req/h"], rotating.map((c) => {
      const old = c.versions.filter((v) => v.state === "retiring");
      return el("tr", {},
        el("td", {}, consumerLink(c.consumer)),
        el("td", {}, badge(c.verdict_code.replace("_", " "), c.verdict_code), " ", c.verdict),
        el("td", {}, old.map((v) => `v${v.version}`).join(", ")),
        el("td", {}, old.map((v) => when(v.deadline) + (v.extension_if_stalled ? ` (extended to ${when(v.extension_if_stalled)} if still in use)` : "")).join("; ")),
        el("td", {}, old.map((v) => String(v.requests_last_hour)).join(", ")));
    }), { id: "rotating" })
    : el("p", {}, "No rotation in progress."));
  out.push(el("h2", {}, "Rejections in the last hour by reason"));
  out.push(byCode.size
    ? table(["Code", "Rejections"], [...byCode.entries()].sort((a, b) => b[1] - a[1]).map(([code, n]) =>
      el("tr", {}, el("td", {}, el("a", { href: `/ui/decisions?code=${encodeURIComponent(code)}&since=1h` }, code)), el("td", {}, String(n)))), { id: "rejections" })
    : el("p", { id: "rejections" }, "No rejections in the last hour."));
  if (decisions.matched > decisions.items.length) out.push(el("p", { class: "hint" }, `Counted from the ${decisions.items.length} most recent of ${decisions.matched} decisions kept in memory.`));
  out.push(el("h2", {}, "Rotations due and blocked"));
  out.push(due.length
    ? table(["Consumer", "Schedule", "Next due", "Blocked by"], due.map((c) => el("tr", {},
      el("td", {}, consumerLink(c.consumer)),
      el("td", {}, badge(c.schedule.state)),
      el("td", {}, when(c.schedule.next_due)),
      el("td", {}, c.schedule.blockers.map((b) => b.message).join("; ") || "—"))))
    : el("p", {}, "Nothing is due."));
  out.push(el("h2", {}, "Versions delivered but not seen"));
  out.push(unseen.length
    ? el("ul", {}, unseen.map((c) => el("li", {}, consumerLink(c.consumer), ": ", c.delivery.warnings.join("; "))))
    : el("p", {}, "Every delivered version has been seen in traffic."));
  out.push(el("h2", {}, "Environments"));
  out.push(table(["Environment", "Protected", "Rotates after"], envs.items.map((e) => el("tr", {},
    el("td", {}, e.name), el("td", {}, e.protected ? "protected" : "no"), el("td", {}, e.rotate_after || "—")))));
  if (status.matched > status.items.length) out.push(el("p", { class: "hint" }, `${status.matched} consumers need attention; the first ${status.items.length} are shown.`));
  out.push(el("h2", {}, "Consumers"));
  out.push(consumersPage(page));
  return out;
}

// ---- Consumer ----------------------------------------------------------------------------

const consumerState = { window: "15m" };

async function consumerPage(env, name) {
  const ref = `${env}/${name}`;
  const q = encodeURIComponent(ref);
  const path = `/v1/consumers/${encodeURIComponent(env)}/${encodeURIComponent(name)}`;
  const [status, adoption, audit, events] = await Promise.all([
    api(`/v1/status?consumer=${q}`),
    api(`${path}/adoption?window=${consumerState.window}`),
    api(`/v1/audit?target=${q}&limit=200`).catch((e) => ({ error: e.message })),
    api("/v1/events?limit=500").catch((e) => ({ error: e.message })),
  ]);
  const c = status.items[0];
  const out = [el("h1", {}, `Consumer ${ref}`)];
  out.push(el("p", { id: "verdict" }, badge(c.verdict_code.replace(/_/g, " "), c.verdict_code), " ", c.verdict,
    " · ", el("a", { href: `/ui/rotate/${encodeURIComponent(env)}/${encodeURIComponent(name)}`, id: "to-rotate" }, "Rotate, retire or revoke…")));
  if (c.verdict_code === "stalled") {
    out.push(el("div", { class: "stall", role: "alert", id: "stall-banner" }, el("strong", {}, "Stalled: "), c.verdict));
  }
  out.push(el("h2", {}, "Adoption"));
  const pick = el("select", { id: "window", "aria-label": "Chart window" },
    ["15m", "1h", "3h", "24h", "7d"].map((w) => el("option", { value: w, selected: w === consumerState.window }, w)));
  pick.addEventListener("change", () => { consumerState.window = pick.value; refresh(); });
  out.push(el("p", {}, el("label", { for: "window" }, "Window "), pick));
  out.push(adoptionChart(adoption));
  out.push(el("h2", {}, "Versions"));
  out.push(table(["Version", "Kid", "State", "Deadline", "Last use", "Req/h", "Req/24h", "Sources"], c.versions.map((v) => el("tr", { id: `version-${v.version}` },
    el("td", {}, `v${v.version}`), el("td", {}, el("code", {}, v.kid)),
    el("td", {}, badge(v.stalled ? "stalled" : v.state, v.stalled ? "stalled" : v.state)),
    el("td", {}, when(v.deadline), v.extension_if_stalled ? ` (extended to ${when(v.extension_if_stalled)} if still in use)` : ""),
    el("td", {}, when(v.last_used_at)), el("td", {}, String(v.requests_last_hour)), el("td", {}, String(v.requests_last_day)),
    el("td", {}, v.sources.length ? el("ul", {}, v.sources.map((s) => el("li", {}, `${s.address}${s.user_agent ? ` (${s.user_agent})` : ""}${s.client_id ? ` client ${s.client_id}` : ""}: ${s.count}, last ${when(s.last_seen)}`))) : "—"))), { id: "versions" }));
  out.push(el("h2", {}, "Delivery"));
  const d = c.delivery;
  if (!d) out.push(el("p", {}, "Manual delivery; no agent has reported."));
  else {
    out.push(el("p", {}, `Delivery: ${d.mode}. ${d.summary || ""}`));
    if (d.warnings.length) out.push(el("ul", {}, d.warnings.map((w) => el("li", { class: "error" }, w))));
    if (d.agents.length) out.push(table(["Agent", "Host", "Version", "Last contact", "Health"], d.agents.map((a) => el("tr", {},
      el("td", {}, a.agent), el("td", {}, a.host || "—"), el("td", {}, `v${a.version}`), el("td", {}, when(a.last_contact)), el("td", {}, a.health || "—")))));
  }
  if (c.schedule) out.push(el("p", {}, "Schedule: ", badge(c.schedule.state), ` next due ${when(c.schedule.next_due)}`, c.schedule.blockers.length ? `; blocked: ${c.schedule.blockers.map((b) => b.message).join("; ")}` : ""));
  out.push(el("h2", {}, "Events"));
  if (events.error) out.push(el("p", { class: "error" }, events.error));
  else {
    const mine = events.items.filter((e) => e.consumer === ref).reverse();
    out.push(paged("events", mine, (e) => `${e.kind} ${JSON.stringify(e.detail)}`, (e) => el("tr", {},
      el("td", {}, when(e.at)), el("td", {}, e.kind), el("td", {}, e.version ? `v${e.version}` : "—")), ["Time", "Event", "Version"]));
  }
  out.push(el("h2", {}, "Audit"));
  if (audit.error) out.push(el("p", { class: "error" }, `Audit not shown: ${audit.error}`));
  else out.push(paged("audit", audit.items.slice().reverse(), (a) => `${a.actor} ${a.action} ${a.detail}`, (a) => el("tr", {},
    el("td", {}, when(a.at)), el("td", {}, a.actor), el("td", {}, a.action), el("td", {}, a.target), el("td", {}, a.request_id || "—")), ["Time", "Actor", "Action", "Target", "Request id"]));
  return out;
}

// ---- Decisions ---------------------------------------------------------------------------

const FILTERS = ["kid", "consumer", "code", "fingerprint", "since"];

async function decisionsPage() {
  const params = new URLSearchParams(location.search);
  const limit = Number(params.get("limit") || PAGE_SIZE);
  const query = new URLSearchParams();
  for (const f of FILTERS) if (params.get(f)) query.set(f, params.get(f));
  query.set("limit", String(limit));
  const list = await api(`/v1/decisions?${query}`);
  const form = el("form", { class: "filters", id: "decision-filters", role: "search" },
    FILTERS.map((f) => el("label", { for: `f-${f}` }, f, el("input", { id: `f-${f}`, name: f, value: params.get(f) || "", placeholder: f === "since" ? "1h" : "" }))),
    el("button", { type: "submit", id: "apply-filters" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const f of FILTERS) { const v = form.elements[f].value.trim(); if (v) next.set(f, v); }
    history.pushState(null, "", `/ui/decisions?${next}`);
    refresh();
  });
  const rows = list.items.map((d, i) => el("tr", { class: "decision", "data-code": d.code },
    el("td", {}, when(d.ts)), el("td", {}, badge(d.decision)), el("td", {}, el("code", {}, d.code)),
    el("td", {}, d.consumer ? consumerLink(d.consumer) : "—"), el("td", {}, d.version ? `v${d.version}` : "—"),
    el("td", {}, el("details", { class: "row", id: `decision-${i}` },
      el("summary", {}, d.kid || d.fingerprint || "details"),
      el("p", {}, d.detail || "(no detail)"),
      el("p", {}, "Request id (search the logs for it): ", el("code", {}, d.request_id)),
      el("pre", {}, JSON.stringify(d, null, 2))))));
  const more = el("button", { type: "button", id: "more", disabled: list.items.length >= list.matched }, "Show more");
  more.addEventListener("click", () => {
    params.set("limit", String(limit + PAGE_SIZE));
    history.replaceState(null, "", `/ui/decisions?${params}`);
    refresh();
  });
  return [el("h1", {}, "Decisions"), form,
    el("p", { id: "matched" }, `${list.items.length} shown of ${list.matched} matching (kept in memory: ${list.capacity_rejected} rejections, ${list.capacity_allowed} allowed).`),
    table(["Time", "Decision", "Code", "Consumer", "Version", "Explanation"], rows, { id: "decisions" }), more];
}

// ---- Rotate ------------------------------------------------------------------------------

let dialogOpen = false;

function confirmDialog(title, lines, needsProtectedConfirm, env, onConfirm) {
  const check = needsProtectedConfirm
    ? el("input", { type: "checkbox", id: "confirm-protected" })
    : null;
  const status = el("p", { id: "confirm-status", "aria-live": "assertive" });
  const go = el("button", { type: "button", class: "danger", id: "confirm-go" }, "Yes, do it");
  const cancel = el("button", { type: "button", id: "confirm-cancel" }, "Cancel");
  const dialog = el("dialog", { id: "confirm", "aria-labelledby": "confirm-title" },
    el("h2", { id: "confirm-title" }, title),
    el("ul", { id: "confirm-lines" }, lines.map((l) => el("li", {}, l))),
    check ? el("p", {}, check, " ", el("label", { for: "confirm-protected" }, `${env} is a protected environment: I confirm this change there (what the CLI's --yes says).`)) : null,
    status, go, " ", cancel);
  const close = () => { dialog.close(); dialog.remove(); dialogOpen = false; refresh(); };
  cancel.addEventListener("click", close);
  dialog.addEventListener("cancel", () => { dialogOpen = false; });
  go.addEventListener("click", async () => {
    if (check && !check.checked) { status.textContent = "Tick the confirmation for the protected environment first."; check.focus(); return; }
    go.disabled = true;
    status.textContent = "Working…";
    try {
      const answer = await onConfirm(Boolean(check && check.checked));
      status.textContent = answer;
      status.className = "";
      go.remove();
      cancel.textContent = "Close";
      cancel.focus();
    } catch (e) {
      status.textContent = e.message;
      status.className = "error";
      go.disabled = false;
    }
  });
  document.body.append(dialog);
  dialogOpen = true;
  dialog.showModal();
  go.focus();
}

async function rotatePage(env, name) {
  const ref = `${env}/${name}`;
  const path = `/v1/consumers/${encodeURIComponent(env)}/${encodeURIComponent(name)}`;
  const p = await api(`${path}/preflight`);
  const out = [el("h1", {}, `Rotate ${ref}`), el("p", {}, consumerLink(ref, `Back to ${ref}`))];
  out.push(el("h2", {}, "Preflight checklist"));
  out.push(el("ul", { id: "checklist" },
    el("li", {}, `Environment ${env}: ${p.protected ? "protected — changes need an extra confirmation" : "not protected"}`),
    el("li", {}, `Delivery: ${p.delivery}`),
    el("li", {}, `Grace window of a rotation now: ${p.grace}`),
    el("li", {}, `Ordering rule: ${p.ordering.rotate_after ? `rotates after ${p.ordering.rotate_after}` : "none"} — ${p.ordering.satisfied ? "satisfied" : "NOT satisfied"}: ${p.ordering.detail}`),
    el("li", {}, "Schedule: ", badge(p.schedule.state), p.schedule.blockers.length ? ` blocked by ${p.schedule.blockers.map((b) => b.message).join("; ")}` : "")));
  out.push(table(["Version", "State", "Req 24h", "Req 1h", "Share 1h", "Last use", "Sources"], p.versions.map((v) => el("tr", {},
    el("td", {}, `v${v.version}`), el("td", {}, badge(v.state)), el("td", {}, String(v.requests_24h)), el("td", {}, String(v.requests_1h)),
    el("td", {}, `${Math.round(v.share_1h * 100)}%`), el("td", {}, when(v.last_used_at)),
    el("td", {}, v.sources.map((s) => `${s.address}${s.user_agent ? ` (${s.user_agent})` : ""}`).join(", ") || "—"))), { id: "preflight-versions" }));
  if (p.warnings.length) out.push(el("h2", {}, "Warnings"), el("ul", { id: "warnings" }, p.warnings.map((w) => el("li", { class: "error" }, w))));
  out.push(el("h2", {}, "What a rotation now sets in motion"));
  out.push(el("ol", { id: "timeline" }, p.timeline.map((s) => el("li", {}, `${when(s.at)}: ${s.what}`))));
  out.push(el("h2", {}, "Act"));
  const grace = el("input", { id: "grace", value: p.grace, size: 6 });
  const rotate = el("button", { type: "button", id: "rotate", class: "danger" }, `Rotate ${ref}…`);
  rotate.addEventListener("click", () => confirmDialog(`Rotate ${ref}?`, [
    `A new version is issued and shown once; the current active version becomes retiring with a grace window of ${grace.value}.`,
    ...p.timeline.map((s) => `${when(s.at)}: ${s.what}`),
    ...p.warnings.map((w) => `Warning: ${w}`),
  ], p.protected, env, async (confirm) => {
    const a = await post(`${path}/rotate`, { grace: grace.value, confirm });
    return `Rotated: v${a.version} issued (kid ${a.kid}). Its key is shown once: ${a.key}`;
  }));
  out.push(el("p", {}, el("label", { for: "grace" }, "Grace window "), grace, " ", rotate));
  const valid = p.versions.filter((v) => v.state === "retiring" || v.state === "active");
  for (const v of valid) {
    const reason = el("input", { id: `reason-${v.version}`, placeholder: "reason", "aria-label": `Revoke reason for v${v.version}` });
    const retire = el("button", { type: "button", id: `retire-${v.version}` }, `Retire v${v.version}…`);
    retire.addEventListener("click", () => confirmDialog(`Retire v${v.version} of ${ref}?`, [
      `v${v.version} stops working now (${v.requests_1h} requests in the last hour would be rejected as key_retired).`,
    ], p.protected, env, async (confirm) => {
      await post(`${path}/versions/v${v.version}/retire`, { confirm });
      return `v${v.version} retired.`;
    }));
    const revoke = el("button", { type: "button", class: "danger", id: `revoke-${v.version}` }, `Revoke v${v.version}…`);
    revoke.addEventListener("click", () => confirmDialog(`Revoke v${v.version} of ${ref}?`, [
      `v${v.version} is rejected from now on as key_revoked, whatever its deadline (${v.requests_1h} requests in the last hour).`,
      `Reason recorded: ${reason.value || "(none)"}`,
    ], p.protected, env, async (confirm) => {
      await post(`${path}/versions/v${v.version}/revoke`, { reason: reason.value, confirm });
      return `v${v.version} revoked.`;
    }));
    out.push(el("p", {}, `v${v.version} (${v.state}): `, retire, " ", reason, " ", revoke));
  }
  return out;
}

// ---- Frame -------------------------------------------------------------------------------

function route() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[1] === "consumer" && parts.length === 4) return () => consumerPage(parts[2], parts[3]);
  if (parts[1] === "rotate" && parts.length === 4) return () => rotatePage(parts[2], parts[3]);
  if (parts[1] === "decisions") return decisionsPage;
  return overview;
}

let running = false;
async function refresh() {
  if (running || dialogOpen) return;
  running = true;
  const main = document.getElementById("main");
  const focused = document.activeElement && document.activeElement.id;
  const caret = focused && typeof document.activeElement.selectionStart === "number"
    ? [document.activeElement.selectionStart, document.activeElement.selectionEnd] : null;
  try {
    const content = await route()();
    main.replaceChildren(...content);
    main.setAttribute("aria-busy", "false");
    document.getElementById("updated").textContent = `Updated ${new Date().toISOString().slice(11, 19)}Z; refreshes every ${REFRESH_MS / 1000} s.`;
  } catch (e) {
    if (!(e instanceof Failure)) console.error(e);
    main.replaceChildren(el("p", { class: "error", role: "alert", id: "page-error" }, e.message));
  } finally {
    running = false;
  }
  // A redraw must not throw the keyboard user back to the top.
  // A box being typed in keeps its caret too.
  const again = focused && document.getElementById(focused);
  if (again) {
    again.focus();
    if (caret && typeof again.setSelectionRange === "function") {
      try { again.setSelectionRange(caret[0], caret[1]); } catch (e) { /* not a text box */ }
    }
  }
}

async function start() {
  document.getElementById("logout-csrf").value = csrf();
  try {
    const me = await api("/ui/api/session");
    document.getElementById("who").textContent = `signed in as ${me.token_id} (${me.scopes.join(", ")})`;
  } catch (e) { /* the page itself says what failed */ }
  window.addEventListener("popstate", refresh);
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
