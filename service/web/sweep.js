// "/sweeps/{id}": one sweep: what it optimizes and its best so far, each trial's eval
// metric against the step (the sweep's own GET /v1/sweeps/{id}/metrics.svg), the trial
// table (params, status, value, pruned; the best marked), the spec; refreshed while it runs.
"use strict";

(() => {
  const { api, el, fmt, statusBadge, progressBar, showError, notice, TERMINAL } = Cloze;
  const REFRESH_MS = 5000;
  const sweepId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const path = "/v1/sweeps/" + encodeURIComponent(sweepId);

  const facts = el("div", { class: "facts", id: "facts" });
  const actions = el("div", { class: "actions" });
  const plot = el("img", { id: "sweep-plot", alt: "each trial's eval metric against the step" });
  const trialBody = el("tbody", { id: "trials" });
  const specBox = el("pre", { id: "spec" });
  let plotUrl = null;

  const link = (href, id) => el("a", { href, class: "id", title: id }, id);

  // "learning_rate 0.00031, schedule cosine": the searched fields without their prefix.
  function params(trial) {
    return Object.entries(trial.params).map(([name, value]) =>
      name.replace(/^hyperparameters\./, "") + " " +
      (typeof value === "number" ? fmt.num(value, 3) : String(value))).join(", ");
  }

  function show(sweep) {
    const spec = sweep.spec;
    document.title = sweep.name + " · Cloze";
    document.querySelector("main h1").replaceChildren(sweep.name + " ", statusBadge(sweep.status));
    const done = sweep.trials.filter((t) => TERMINAL.has(t.status)).length;
    const best = Cloze.bestTrial(sweep), ended = TERMINAL.has(sweep.status);
    const fact = (name, value) => el("div", {}, el("b", {}, name), value);
    facts.replaceChildren(
      fact("id", sweep.id), fact("trials done", progressBar(done, spec.trials)),
      fact("started", String(sweep.trials_started) + " (" + spec.parallel + " at once)"),
      fact("optimizes", spec.direction + " " + spec.metric),
      fact(ended ? "best" : "best so far", fmt.num(best && best.value)),
      fact("best trial", best ? el("a", { href: "/jobs/" + encodeURIComponent(best.job_id),
        title: best.job_id }, "#" + best.number) : "–"),
      fact("model", sweep.model_id
        ? link("/playground?model=" + encodeURIComponent(sweep.model_id), sweep.model_id) : "–"),
      fact("created", fmt.time(sweep.created_at)), fact("finished", fmt.time(sweep.finished_at)));
    if (sweep.error) facts.append(fact("error", sweep.error.code + ": " + sweep.error.message));
    const ids = sweep.trials.map((t) => t.job_id);
    actions.replaceChildren(
      TERMINAL.has(sweep.status) ? "" : el("button", { id: "cancel", onclick: cancel }, "Cancel sweep"),
      el("button", { onclick: () => Cloze.download(path + "/metrics.svg", sweep.id + ".svg") },
        "Download the plot (SVG)"),
      ids.length ? el("a", { href: "/compare?ids=" + ids.slice(0, 10).map(encodeURIComponent)
        .join(",") }, "Compare the trials' loss curves") : "");
    trialBody.replaceChildren(...sweep.trials.map((t) => el("tr", { "data-trial": t.number },
      el("td", { class: "num" }, "#" + t.number),
      el("td", {}, link("/jobs/" + encodeURIComponent(t.job_id), t.job_id)),
      el("td", {}, statusBadge(t.status)),
      el("td", { class: "num" }, fmt.int(t.step)),
      el("td", { class: "wrap" }, params(t)),
      el("td", { class: "num" }, fmt.num(t.value)),
      el("td", { class: "num" }, fmt.num(t.best_metric)),
      el("td", {}, t.pruned ? "at step " + fmt.int(t.pruned_step) : "–"),
      el("td", { class: "best-mark" }, best && t.job_id === best.job_id
        ? (ended ? "★ best" : "★ best so far") : ""))));
    if (!sweep.trials.length) {
      trialBody.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no trial yet")));
    }
    specBox.textContent = JSON.stringify(spec, null, 2);
  }

  async function loadPlot() {  // fetched with the key, shown from a blob: (no key in an <img>)
    const response = await api(path + "/metrics.svg");
    const url = URL.createObjectURL(await response.blob());
    plot.onload = () => { if (plotUrl) URL.revokeObjectURL(plotUrl); plotUrl = url; };
    plot.src = url;
  }

  async function refresh() {
    const sweep = await api(path);
    show(sweep);
    await loadPlot();
    return !TERMINAL.has(sweep.status);
  }

  async function cancel() {
    try {
      show(await api(path + "/cancel", { method: "POST" }));
      await loadPlot();
    } catch (error) { showError(error); }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    Cloze.main().append(facts, actions, el("div", { class: "card plot" }, plot),
      el("h2", {}, "Trials"),
      el("div", { class: "scroll" }, el("table", { id: "trial-table" },
        el("thead", {}, el("tr", {}, ["trial", "job", "status", "step", "params", "value",
          "best eval", "pruned", ""].map((h) => el("th", {}, h)))), trialBody)),
      el("h2", {}, "Spec"), specBox);
    for (;;) {
      let active = false;
      try {
        active = await refresh();
        notice("");
      } catch (error) {
        showError(error);
        if (error instanceof Cloze.ApiError && error.status < 500 && error.status !== 429) return;
      }
      if (!active) return;
      await Cloze.sleep(REFRESH_MS);
    }
  });
})();
