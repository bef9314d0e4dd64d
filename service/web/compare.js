// "/compare?ids=a,b": the loss curves of several jobs on one chart (train loss solid, eval
// loss dashed with dots, one colour per job); refreshed while any of them runs.
"use strict";

(() => {
  const { api, el, fmt, statusBadge, showError, notice } = Cloze;
  const { train_loss: TRAIN, eval_loss: EVAL } = Cloze.METRICS;
  const REFRESH_MS = 5000;
  const MAX_JOBS = 10;
  const params = new URLSearchParams(location.search);
  const ids = (params.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean)
    .slice(0, MAX_JOBS);

  const form = el("form", { class: "actions", id: "compare-form" });
  const input = el("input", { name: "ids", size: 70, value: ids.join(","),
                              placeholder: "job ids, separated by commas" });
  const table = el("tbody");
  let trainCard, evalCard;

  async function load() {
    const results = await Promise.all(ids.map(async (id) => {
      try {
        const path = "/v1/jobs/" + encodeURIComponent(id);
        const [job, metrics] = await Promise.all([api(path), api(path + "/metrics?max_points=2000")]);
        return { job, points: metrics.data };
      } catch (error) {
        return { id, error };
      }
    }));
    const train = [], evals = [];
    table.replaceChildren();
    results.forEach((r, i) => {
      const color = Chart.COLORS[i % Chart.COLORS.length];
      if (r.error) {
        table.append(el("tr", {}, el("td", {}, r.id), el("td", { colspan: 5 }, r.error.message)));
        return;
      }
      const name = r.job.name + " (" + r.job.id + ")";
      const pick = (field) => r.points.filter((p) => typeof p[field] === "number")
        .map((p) => [p.step, p[field]]);
      train.push({ name: r.job.id, label: name, color, points: pick(TRAIN.name) });
      evals.push({ name: r.job.id, label: name, color, points: pick(EVAL.name), dots: true,
                   dashed: true });
      const swatch = el("i");
      swatch.style.background = color;
      table.append(el("tr", {},
        el("td", {}, el("span", { class: "legend" }, swatch),
          el("a", { href: "/jobs/" + encodeURIComponent(r.job.id) }, r.job.id)),
        el("td", {}, r.job.name), el("td", {}, statusBadge(r.job.status)),
        el("td", { class: "num" }, fmt.int(r.job.progress.step)),
        el("td", { class: "num" }, fmt.num(r.job.train_loss)),
        el("td", { class: "num" }, fmt.num(r.job.eval_loss))));
    });
    Chart.draw(trainCard.svg, train, { yLabel: TRAIN.label });
    Chart.legend(trainCard.legend, train);
    Chart.draw(evalCard.svg, evals, { yLabel: EVAL.label });
    Chart.legend(evalCard.legend, evals);
    return results.some((r) => r.job && !Cloze.TERMINAL.has(r.job.status));
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const main = Cloze.main();
    form.append(input, el("button", { type: "submit" }, "Compare"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const list = input.value.split(/[\s,]+/).filter(Boolean).map(encodeURIComponent);
      location.search = "?ids=" + list.join(",");
    });
    const grid = el("div", { class: "charts" });
    main.append(form, grid, el("table", {}, el("thead", {}, el("tr", {},
      ["job", "name", "status", "step", TRAIN.label, EVAL.label].map((h) => el("th", {}, h)))),
      table));
    trainCard = Chart.card(grid, TRAIN.label, "chart-train");
    evalCard = Chart.card(grid, EVAL.label, "chart-eval");
    if (!ids.length) {
      notice("Choose jobs on the jobs page, or type their ids above.");
      return;
    }
    for (;;) {
      let active = false;
      try { active = await load(); } catch (error) { showError(error); }
      if (!active) return;
      await Cloze.sleep(REFRESH_MS);
    }
  });
})();
