// "/sweeps": the hyperparameter sweeps (POST /v1/sweeps), refreshed from GET /v1/sweeps
// every few seconds: status, trials done of the total, the metric, the best value so far
// (the best trial's, while it runs; the API's choice once it has ended).
"use strict";

(() => {
  const { api, el, fmt, statusBadge, progressBar, showError, notice, TERMINAL } = Cloze;
  const REFRESH_MS = 3000;

  const body = el("tbody", { id: "sweeps-body" });
  const updated = el("span", { class: "muted", id: "updated" });

  const link = (href, id, title) => el("a", { href, class: "id", title: title || id }, id);

  function row(sweep) {
    const spec = sweep.spec, done = sweep.trials.filter((t) => TERMINAL.has(t.status)).length;
    const best = Cloze.bestTrial(sweep);
    return el("tr", { "data-sweep": sweep.id },
      el("td", {}, link("/sweeps/" + encodeURIComponent(sweep.id), sweep.id)),
      el("td", { class: "wrap" }, sweep.name),
      el("td", {}, statusBadge(sweep.status)),
      el("td", {}, progressBar(done, spec.trials)),
      el("td", {}, spec.direction + " " + spec.metric),
      el("td", { class: "num best" }, fmt.num(best && best.value)),
      el("td", {}, best ? link("/jobs/" + encodeURIComponent(best.job_id), best.job_id) : "–"),
      el("td", {}, sweep.model_id ? link("/playground?model=" + encodeURIComponent(sweep.model_id),
        sweep.model_id, sweep.model_id + ": try it in the fill-mask playground") : "–"),
      el("td", { title: fmt.time(sweep.created_at) }, fmt.when(sweep.created_at)));
  }

  async function refresh() {
    try {
      const page = await api("/v1/sweeps?limit=100");
      body.replaceChildren(...page.data.map(row));
      if (!page.data.length) {
        body.append(el("tr", {}, el("td", { colspan: 9, class: "muted wrap" },
          "No sweeps yet: POST /v1/sweeps (or cloze sweeps submit SPEC) runs a job spec as " +
          "trials over a search space.")));
      }
      updated.textContent = "updated " + new Date().toLocaleTimeString();
      notice("");
    } catch (error) {
      showError(error);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    Cloze.main().append(
      el("div", { class: "actions" }, updated),
      el("div", { class: "scroll" }, el("table", { id: "sweeps" },
        el("thead", {}, el("tr", {}, ["id", "name", "status", "trials done", "optimizes", "best",
          "best trial", "model", "created"].map((h) => el("th", {}, h)))),
        body)));
    refresh();
    setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  });
})();
