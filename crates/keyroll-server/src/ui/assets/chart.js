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

// `data` is the answer of GET /v1/consumers/{env}/{name}/adoption. Returns a <figure>.
export function adoptionChart(data) {
  const W = 900, H = 300, L = 56, R = 16, T = 16, B = 40;
  const step = data.step_seconds * 1000;
  const from = Date.parse(data.from);
  const to = Date.parse(data.to);
  const end = to - (to % step) + step;
  const buckets = Math.max(1, Math.round((end - from) / step));
  const series = data.versions.map((v) => {
    const counts = new Array(buckets).fill(0);
    for (const p of v.points) {
      const i = Math.floor((Date.parse(p.at) - from) / step);
      if (i >= 0 && i < buckets) counts[i] += p.requests;
    }
    return { v, counts };
  });
  const max = Math.max(1, ...series.flatMap((s) => s.counts));
  const x = (t) => L + ((t - from) / (end - from)) * (W - L - R);
  const y = (n) => H - B - (n / max) * (H - T - B);
  const figure = document.createElement("figure");
  figure.className = "chart";
  const total = series.map((s) => `v${s.v.version}: ${s.counts.reduce((a, b) => a + b, 0)}`).join(", ");
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": `Requests per ${data.resolution} per version since ${data.from} (${total})`,
    id: "adoption-svg",
  });
  for (let k = 0; k <= 4; k++) {
    const n = Math.round((max * k) / 4);
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(n), y2: y(n) }));
    root.append(svg("text", { x: L - 6, y: y(n) + 4, "text-anchor": "end" }, String(n)));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  for (let k = 0; k <= 4; k++) {
    const t = from + ((end - from) * k) / 4;
    const label = new Date(t).toISOString().slice(11, 16) + "Z";
    root.append(svg("text", { x: x(t), y: H - B + 16, "text-anchor": "middle" }, label));
  }
  series.forEach((s, i) => {
    const pts = s.counts.map((n, j) => `${x(from + j * step + step / 2).toFixed(1)},${y(n).toFixed(1)}`);
    const line = svg("polyline", {
      class: `line c${i % 5}`,
      points: pts.join(" "),
      "data-version": s.v.version,
      "data-total": s.counts.reduce((a, b) => a + b, 0),
    });
    line.append(svg("title", {}, `v${s.v.version} (${s.v.state})`));
    root.append(line);
  });
  let labelRow = 0;
  for (const m of data.marks) {
    const t = Date.parse(m.at);
    if (t < from || t > end) continue;
    root.append(svg("line", { class: `mark mark-${m.kind}`, x1: x(t), x2: x(t), y1: T, y2: H - B, "data-kind": m.kind }));
    root.append(svg("text", { x: x(t) + 3, y: T + 10 + 12 * (labelRow++ % 4) }, `v${m.version} ${MARK_WORDS[m.kind] || m.kind}`));
  }
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
  figure.append(legend);
  return figure;
}
