// The adoption chart: requests per step per version as SVG lines, with the rotation's moments
// (issued, deadline, stall extension, retirement) as labelled vertical marks. No library: the
// SVG is built with DOM calls (no markup strings), so a strict CSP allows it.

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

const MARK_WORDS = {
  issued: "issued",
  deadline: "deadline",
  stall_extension: "stall extension",
  extension_if_stalled: "extension if stalled",
  retired: "retired",
  revoked: "revoked",
};

// The first instant worth drawing: a little before the earliest traffic or mark in the window,
// so a rotation that began two minutes ago is not squeezed into the right edge of a 15-minute
// window. At least `MIN_STEPS` steps stay visible; with nothing to show the whole window does.
const MIN_STEPS = 4;
function fitFrom(from, end, step, series, marks) {
  let first = end;
  for (const s of series) {
    const i = s.counts.findIndex((n) => n > 0);
    if (i >= 0) first = Math.min(first, from + i * step);
  }
  for (const m of marks) {
    const t = Date.parse(m.at);
    if (t >= from && t <= end) first = Math.min(first, t - (t % step));
  }
  if (first >= end) return from;
  return Math.max(from, Math.min(first - step, end - MIN_STEPS * step));
}

function clock(t) {
  return new Date(t).toISOString().slice(11, 19) + "Z";
}

// `data` is the answer of GET /v1/consumers/{env}/{name}/adoption. Returns a <figure>.
export function adoptionChart(data) {
  const W = 900, H = 300, L = 56, R = 16, T = 22, B = 40;
  const step = data.step_seconds * 1000;
  const windowFrom = Date.parse(data.from);
  const to = Date.parse(data.to);
  // Upcoming marks (a deadline seconds ahead) stay in view: the axis runs past now to the
  // latest of them, up to a third of the window ahead; the lines stop at now.
  let end = to - (to % step) + step;
  const horizon = to + (to - windowFrom) / 3;
  for (const m of data.marks) {
    const t = Date.parse(m.at);
    if (t > end && t <= horizon) end = t - (t % step) + step;
  }
  const allBuckets = Math.max(1, Math.round((end - windowFrom) / step));
  const all = data.versions.map((v) => {
    const counts = new Array(allBuckets).fill(0);
    for (const p of v.points) {
      const i = Math.floor((Date.parse(p.at) - windowFrom) / step);
      if (i >= 0 && i < allBuckets) counts[i] += p.requests;
    }
    return { v, counts };
  });
  const from = fitFrom(windowFrom, end, step, all, data.marks);
  const skip = Math.round((from - windowFrom) / step);
  const series = all.map((s) => ({ v: s.v, counts: s.counts.slice(skip) }));
  const max = Math.max(1, ...series.flatMap((s) => s.counts));
  const x = (t) => L + ((t - from) / (end - from)) * (W - L - R);
  const y = (n) => H - B - (n / max) * (H - T - B);
  const figure = document.createElement("figure");
  figure.className = "chart";
  const total = series.map((s) => `v${s.v.version}: ${s.counts.reduce((a, b) => a + b, 0)}`).join(", ");
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": `Requests per ${data.resolution} per version since ${new Date(from).toISOString()} (${total})`,
    id: "adoption-svg",
    "data-from": new Date(from).toISOString(),
  });
  for (let k = 0; k <= 4; k++) {
    const n = Math.round((max * k) / 4);
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(n), y2: y(n) }));
    root.append(svg("text", { x: L - 6, y: y(n) + 4, "text-anchor": "end" }, String(n)));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  const short = end - from <= 30 * 60 * 1000;
  for (let k = 0; k <= 4; k++) {
    const t = from + ((end - from) * k) / 4;
    const label = short ? clock(t).slice(0, 8) + "Z" : new Date(t).toISOString().slice(5, 16).replace("T", " ") + "Z";
    const anchor = k === 0 ? "start" : k === 4 ? "end" : "middle";
    root.append(svg("text", { x: x(t), y: H - B + 16, "text-anchor": anchor }, label));
  }
  series.forEach((s, i) => {
    const pts = s.counts
      .map((n, j) => [from + j * step, n])
      .filter(([t]) => t <= to)
      .map(([t, n]) => `${x(t + step / 2).toFixed(1)},${y(n).toFixed(1)}`);
    const line = svg("polyline", {
      class: `line c${i % 5}`,
      points: pts.join(" "),
      "data-version": s.v.version,
      "data-total": s.counts.reduce((a, b) => a + b, 0),
    });
    line.append(svg("title", {}, `v${s.v.version} (${s.v.state})`));
    root.append(line);
  });
  if (end - to > step) {
    root.append(svg("line", { class: "now", x1: x(to), x2: x(to), y1: T, y2: H - B }));
  }
  // Marks: a numbered badge on each line (badges of marks close together alternate rows), and
  // the words in the caption's list, so labels never overlap or run off the edge.
  const shown = data.marks
    .map((m) => ({ m, t: Date.parse(m.at) }))
    .filter(({ t }) => t >= from && t <= end)
    .sort((a, b) => a.t - b.t);
  let lastX = -Infinity, row = 0;
  shown.forEach(({ m, t }, k) => {
    const mx = x(t);
    row = mx - lastX < 14 ? (row + 1) % 3 : 0;
    lastX = mx;
    root.append(svg("line", { class: `mark mark-${m.kind}`, x1: mx, x2: mx, y1: T, y2: H - B, "data-kind": m.kind }));
    const badge = svg("text", { class: "badge", x: mx, y: T - 8 + 11 * row, "text-anchor": "middle" }, String(k + 1));
    badge.append(svg("title", {}, `v${m.version} ${MARK_WORDS[m.kind] || m.kind} at ${m.at}`));
    root.append(badge);
  });
  figure.append(root);
  const legend = document.createElement("figcaption");
  legend.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = `swatch c${i % 5}`;
    item.append(sw, `v${s.v.version} — ${s.v.state}, ${s.counts.reduce((a, b) => a + b, 0)} requests`);
    legend.append(item);
  });
  const note = document.createElement("span");
  note.className = "muted";
  note.textContent = data.resolution === "minute"
    ? "per minute, this node's traffic (kept in memory for 3 h)"
    : "per hour, every node (stored)";
  legend.append(note);
  if (shown.length) {
    const list = document.createElement("ol");
    list.className = "marks";
    for (const { m, t } of shown) {
      const li = document.createElement("li");
      li.dataset.kind = m.kind;
      li.textContent = `v${m.version} ${MARK_WORDS[m.kind] || m.kind} at ${short ? clock(t) : m.at}`;
      list.append(li);
    }
    legend.append(list);
  }
  figure.append(legend);
  return figure;
}
