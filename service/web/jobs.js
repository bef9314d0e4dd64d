// "/": the jobs table, refreshed from GET /v1/jobs every few seconds; tick jobs to compare.
"use strict";

(() => {
  const { api, el, fmt, statusBadge, progressBar, showError, notice } = Cloze;
  const M = Cloze.METRICS;
  const REFRESH_MS = 2000;
  const chosen = new Set();

  const body = el("tbody", { id: "jobs-body" });
  const compare = el("button", { id: "compare-button", disabled: true, onclick: () => {
    location.href = "/compare?ids=" + [...chosen].map(encodeURIComponent).join(",");
  } }, "Compare selected");
  const updated = el("span", { class: "muted", id: "updated" });

  function row(job) {
    const p = job.progress;
    const box = el("input", { type: "checkbox", checked: chosen.has(job.id), onchange: (e) => {
      if (e.target.checked) chosen.add(job.id); else chosen.delete(job.id);
      compare.disabled = chosen.size < 1;
    } });
    return el("tr", { "data-job": job.id },
      el("td", {}, box),
      el("td", {}, el("a", { href: "/jobs/" + encodeURIComponent(job.id), class: "id",
                             title: job.id }, job.id)),
      // The kind under the name (not a column of its own): the name keeps room to be read.
      el("td", { class: "wrap name" }, el("div", {}, job.name), el("div", { class: "muted small" },
        job.type + (job.spec && (job.spec.objective || job.spec.task)
          ? " · " + (job.spec.objective || job.spec.task) : ""))),
      el("td", {}, statusBadge(job.status)),
      el("td", {}, progressBar(p.step, p.total_steps)),
      el("td", { class: "num train-loss" }, fmt.num(job.train_loss)),
      el("td", { class: "num" }, fmt.num(job.eval_loss)),
      el("td", { class: "num" }, fmt.num(p.tokens_per_second, 3)),
      el("td", { class: "num" }, job.status === "running" ? fmt.duration(p.eta_seconds) : "–"),
      el("td", { title: fmt.time(job.created_at) }, fmt.when(job.created_at)),
      el("td", {}, job.model_id
        ? el("a", { href: "/playground?model=" + encodeURIComponent(job.model_id), class: "id",
                    title: job.model_id + ": try it in the fill-mask playground" }, job.model_id)
        : "–"));
  }

  async function refresh() {
    try {
      const page = await api("/v1/jobs?limit=100");
      body.replaceChildren(...page.data.map(row));
      if (!page.data.length) {
        body.append(el("tr", {}, el("td", { colspan: 11, class: "muted" },
          "No jobs yet: ", el("a", { href: "/new" }, "upload a corpus and submit one"), ".")));
      }
      updated.textContent = "updated " + new Date().toLocaleTimeString();
      notice("");
    } catch (error) {
      showError(error);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const main = Cloze.main();
    main.append(
      el("div", { class: "actions" }, compare, el("a", { href: "/new" }, "New job"), updated),
      el("div", { class: "scroll" }, el("table", { id: "jobs" },
        el("thead", {}, el("tr", {}, ["", "id", "name", "status", "progress",
          M.train_loss.label, M.eval_loss.label, M.tokens_per_second.label, "ETA", "created",
          "model"].map(
          (h) => el("th", {}, h)))),
        body)));
    refresh();
    setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  });
})();
