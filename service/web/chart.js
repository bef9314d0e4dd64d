// Line charts in SVG, drawn here (no library): round ticks, one path per series, a dot per
// point for sparse series (eval points). Chart.draw(svg, series, options) redraws all.
"use strict";

const Chart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const MAX_POINTS = 3000; // drawn per series
  const W = 600, H = 260, LEFT = 58, RIGHT = 12, TOP = 10, BOTTOM = 32;
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function node(tag, attrs, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function ticks(low, high, count = 5) {
    if (!(high > low)) high = low + (Math.abs(low) || 1);
    const raw = (high - low) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const out = [];
    for (let v = Math.floor(low / step) * step; v < high + step; v += step) {
      out.push(Number(v.toPrecision(12)));
      if (v >= high) break;
    }
    return out;
  }

  // How an axis writes its ticks: one style per axis, with the digits its step needs (so
  // that ticks 0.00096 and 0.00098 do not both read "1e-3"); 250k and 1.5M for counts.
  function labeler(ticks) {
    const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : Math.abs(ticks[0]) || 1;
    const stepPower = Math.floor(Math.log10(step) + 1e-9);
    const big = Math.max(...ticks.map(Math.abs));
    const zero = (write) => (v) => (v === 0 ? "0" : write(v));
    if (big >= 1e4) {
      const [unit, suffix] = big >= 1e9 ? [9, "G"] : big >= 1e6 ? [6, "M"] : [3, "k"];
      return zero((v) => (v / 10 ** unit).toFixed(Math.max(0, unit - stepPower)) + suffix);
    }
    if (big < 1e-3) {
      const digits = Math.max(0, Math.floor(Math.log10(big) + 1e-9) - stepPower);
      return zero((v) => v.toExponential(digits));
    }
    return zero((v) => v.toFixed(Math.max(0, -stepPower)));
  }

  // series: [{name, label, color, points: [[x, y], ...], dots, dashed}]
  function draw(svg, series, { yLabel = "", xLabel = "step" } = {}) {
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.classList.add("chart");
    const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (!all.length) {
      svg.append(node("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "waiting for points…"));
      return;
    }
    const xt = ticks(Math.min(0, ...all.map((p) => p[0])), Math.max(...all.map((p) => p[0])));
    const yt = ticks(Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1])));
    const [x0, x1, y0, y1] = [xt[0], xt[xt.length - 1], yt[0], yt[yt.length - 1]];
    const xLabelOf = labeler(xt), yLabelOf = labeler(yt);
    const pw = W - LEFT - RIGHT, ph = H - TOP - BOTTOM;
    const px = (x) => (LEFT + ((x - x0) / (x1 - x0 || 1)) * pw).toFixed(1);
    const py = (y) => (TOP + ph - ((y - y0) / (y1 - y0 || 1)) * ph).toFixed(1);
    const grid = node("g", { class: "grid" });
    for (const x of xt) {
      grid.append(node("line", { x1: px(x), x2: px(x), y1: TOP, y2: TOP + ph }));
      svg.append(node("text", { x: px(x), y: TOP + ph + 14, "text-anchor": "middle" }, xLabelOf(x)));
    }
    for (const y of yt) {
      grid.append(node("line", { x1: LEFT, x2: LEFT + pw, y1: py(y), y2: py(y) }));
      svg.append(node("text", { x: LEFT - 5, y: Number(py(y)) + 4, "text-anchor": "end" }, yLabelOf(y)));
    }
    svg.prepend(grid);
    svg.append(node("rect", { x: LEFT, y: TOP, width: pw, height: ph, fill: "none", stroke: "#bbb" }));
    svg.append(node("text", { x: LEFT + pw / 2, y: H - 4, "text-anchor": "middle" }, xLabel));
    svg.append(node("text", { transform: `translate(12 ${TOP + ph / 2}) rotate(-90)`,
                              "text-anchor": "middle" }, yLabel));
    series.forEach((s, i) => {
      let points = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
      if (!points.length) return;
      if (points.length > MAX_POINTS) {  // more than the pixels across: thin evenly, keep the last
        const stride = Math.ceil(points.length / MAX_POINTS);
        points = points.filter((_, j) => j % stride === 0 || j === points.length - 1);
      }
      const color = s.color || COLORS[i % COLORS.length];
      const group = node("g", { class: "series", "data-name": s.name, "data-points": points.length });
      const d = points.map(([x, y], j) => (j ? "L" : "M") + px(x) + " " + py(y)).join("");
      group.append(node("path", { d, fill: "none", stroke: color, "stroke-width": 1.6,
                                  "stroke-dasharray": s.dashed ? "5 3" : "none" }));
      if (s.dots) {
        for (const [x, y] of points) {
          const dot = node("circle", { cx: px(x), cy: py(y), r: 2.5, fill: color });
          dot.append(node("title", {}, `${s.label || s.name}: step ${x}, ${y}`));
          group.append(dot);
        }
      }
      svg.append(group);
    });
  }

  // A legend (HTML) for the same series.
  function legend(container, series) {
    container.replaceChildren(...series.filter((s) => s.points.length).map((s, i) => {
      const swatch = document.createElement("i");
      swatch.style.background = s.color || COLORS[i % COLORS.length];
      const item = document.createElement("span");
      item.append(swatch, s.label || s.name);
      return item;
    }));
  }

  // A card with a title, an SVG and a legend, appended to `parent`; returns its parts.
  function card(parent, title, id) {
    const box = document.createElement("div");
    box.className = "card";
    const h = document.createElement("h3");
    h.textContent = title;
    const svg = document.createElementNS(NS, "svg");
    svg.id = id;
    const key = document.createElement("div");
    key.className = "legend";
    box.append(h, svg, key);
    parent.append(box);
    return { svg, legend: key };
  }

  return { draw, legend, card, COLORS, ticks, labeler };
})();
