// A small SVG line chart: one or more series of (epoch, value) points, axes with a few ticks, a legend.
// Written for trainlab's curves; no dependencies.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

function svgEl(name, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, count = 5) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const step0 = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toFixed(12));
  return ticks;
}

// Where each series' legend entry goes: left to right, wrapping onto further rows. SVG text cannot be measured
// before it is on the page, so a label's width is estimated from its length (11px text: ~6.4px a character).
function legendLayout(labels, left, right) {
  let x = left, y = 24;
  return labels.map((label) => {
    const text = label.length > 60 ? `${label.slice(0, 59)}…` : label;
    const w = 14 + text.length * 6.4;
    if (x > left && x + w > right) { x = left; y += 16; }
    const at = {x, y, text};
    x += w + 14;
    return at;
  });
}

// series: [{label, points: [[x, y], ...], color, thin, unlisted}] (thin: a faint line without dots, for many points;
// unlisted: not in the legend, for a line that goes with another series); options: {title, width, height, xLabel,
// logX}: x is the epoch unless `xLabel` names what it is instead (then on a log scale with `logX`).
function lineChart(series, options = {}) {
  const width = options.width || 460;
  const listed = series.filter((s) => !s.unlisted);
  const legend = legendLayout(listed.map((s) => s.label), 60, width - 12);
  const extra = legend.length ? legend[legend.length - 1].y - 24 : 0;  // the legend's rows after its first
  const m = {left: 52, right: 12, top: 44 + extra, bottom: 38};
  const height = (options.height || 260) + extra;
  const svg = svgEl("svg", {viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img"});
  svg.appendChild(svgEl("text", {x: m.left, y: 16, class: "chart-title"}, options.title || ""));
  const points = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
  if (!points.length) {
    svg.appendChild(svgEl("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted"},
      "no finished epoch yet"));
    return svg;
  }
  const epochs = !options.xLabel;
  const tx = (v) => (options.logX ? Math.log10(v) : v);  // where a value sits along the x axis
  const xs = points.map((p) => tx(p[0])), ys = points.map((p) => p[1]);
  const spread = (Math.max(...xs) - Math.min(...xs)) * 0.05 || 1;
  const xLo = epochs ? Math.min(...xs, 1) : Math.min(...xs) - spread;
  const xHi = epochs ? Math.max(...xs, 2) : Math.max(...xs) + spread;
  let yLo = Math.min(...ys), yHi = Math.max(...ys);
  const pad = (yHi - yLo) * 0.08 || Math.abs(yHi) * 0.1 || 1;
  yLo -= pad; yHi += pad;
  const x = (v) => m.left + (tx(v) - xLo) / (xHi - xLo) * (width - m.left - m.right);
  const y = (v) => height - m.bottom - (v - yLo) / (yHi - yLo) * (height - m.top - m.bottom);
  for (const t of niceTicks(yLo, yHi)) {
    svg.appendChild(svgEl("line", {x1: m.left, x2: width - m.right, y1: y(t), y2: y(t), class: "grid"}));
    svg.appendChild(svgEl("text", {x: m.left - 6, y: y(t) + 4, "text-anchor": "end", class: "tick"}, +t.toPrecision(4)));
  }
  // Whole epochs; or a value's nice steps, or on a log scale its powers of ten.
  const xTicks = epochs ? niceTicks(xLo, xHi, Math.min(8, xHi - xLo)).filter(Number.isInteger)
    : options.logX ? niceTicks(xLo, xHi).filter(Number.isInteger).map((k) => 10 ** k) : niceTicks(xLo, xHi);
  for (const t of xTicks) {
    svg.appendChild(svgEl("text", {x: x(t), y: height - m.bottom + 16, "text-anchor": "middle", class: "tick"},
      +t.toPrecision(4)));
  }
  svg.appendChild(svgEl("text", {x: (width + m.left) / 2, y: height - 6, "text-anchor": "middle", class: "tick"},
    options.xLabel || "epoch"));
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const pts = s.points.filter((p) => p[1] !== null && Number.isFinite(p[1]));
    if (!pts.length) return;
    svg.appendChild(svgEl("polyline", {points: pts.map((p) => `${x(p[0])},${y(p[1])}`).join(" "),
      fill: "none", stroke: color, "stroke-width": s.thin ? 1 : 2, opacity: s.thin ? 0.5 : 1,
      "data-series": s.label}));
    for (const p of s.thin ? [] : pts) {
      const dot = svgEl("circle", {cx: x(p[0]), cy: y(p[1]), r: 3, fill: color, class: "point",
        "data-series": s.label, [epochs ? "data-epoch" : "data-x"]: p[0]});
      dot.appendChild(svgEl("title", {}, `${s.label}, ${options.xLabel || "epoch"} ${p[0]}: ${p[1].toPrecision(4)}`));
      svg.appendChild(dot);
    }
    if (s.unlisted) return;
    const at = legend[listed.indexOf(s)];
    svg.appendChild(svgEl("rect", {x: at.x, y: at.y, width: 10, height: 10, fill: color}));
    const text = svgEl("text", {x: at.x + 14, y: at.y + 9, class: "legend"}, at.text);
    text.appendChild(svgEl("title", {}, s.label));
    svg.appendChild(text);
  });
  return svg;
}

window.lineChart = lineChart;
