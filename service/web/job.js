// "/jobs/{id}": one job, live. Its curves (train/eval loss, learning rate, tokens/s) and
// log lines arrive by GET /v1/jobs/{id}/stream; checkpoints and the spec by plain GETs.
// An evaluate job has no curve of its own: its page shows its table of scores instead
// (the job's "evaluation", filled in as cells finish; re-read with the job).
"use strict";

(() => {
  const { api, el, fmt, statusBadge, progressBar, showError, notice, streamJob } = Cloze;
  const M = Cloze.METRICS;
  const jobId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const points = new Map(); // step -> merged metric point (eval results arrive later)
  // The job type whose result is a table of scores (job.evaluation) rather than a curve.
  const EVALUATE = "evaluate";
  let job = null, charts = null, pending = false, evaluation = null;

  const facts = el("div", { class: "facts", id: "facts" });
  const logBox = el("div", { class: "log", id: "log" });
  const checkpointBody = el("tbody", { id: "checkpoints" });
  const specBox = el("pre", { id: "spec" });
  const actions = el("div", { class: "actions" });
  const grid = el("div", { class: "charts", id: "charts" });
  const checkpointSection = el("section", { id: "checkpoint-section" });
  const evaluationSection = el("section", { id: "evaluation", hidden: true });

  const modelLink = (id) => id ? el("a", { href: "/playground?model=" +
    encodeURIComponent(id) }, id) : "–";

  function showJob() {
    const p = job.progress;
    const evaluate = job.type === EVALUATE;
    document.title = job.name + " · Cloze";
    const head = document.querySelector("main h1");
    head.replaceChildren(job.name + " ", statusBadge(job.status));
    const fact = (name, value) => el("div", {}, el("b", {}, name), value);
    const eta = fact("ETA", job.status === "running" ? fmt.duration(p.eta_seconds) : "–");
    const times = [fact("attempts", String(job.attempts)),
      fact("started", fmt.time(job.started_at)), fact("finished", fmt.time(job.finished_at))];
    if (evaluate) {  // its progress counts cells (a task trained one way), not steps
      facts.replaceChildren(
        fact("id", job.id), fact("cells", progressBar(p.step, p.total_steps)), eta, ...times,
        fact("model", modelLink(job.spec.model_id)),
        job.spec.compare_model_id ? fact("compared with", modelLink(job.spec.compare_model_id))
          : "");
    } else {
      facts.replaceChildren(
        fact("id", job.id), fact("progress", progressBar(p.step, p.total_steps)),
        fact(M.train_loss.label, fmt.num(job.train_loss)),
        fact(M.eval_loss.label, fmt.num(job.eval_loss)),
        fact(M.tokens_per_second.label, fmt.num(p.tokens_per_second, 3)),
        fact(M.tokens_seen.label, fmt.int(p.tokens_seen)), eta, ...times,
        fact("model", modelLink(job.model_id)));
    }
    if (job.error) facts.append(fact("error", job.error.code + ": " + job.error.message));
    specBox.textContent = JSON.stringify(job.spec, null, 2);
    // A status event carries no table: the last one read stays until the next read.
    if (job.evaluation) evaluation = job.evaluation;
    grid.hidden = checkpointSection.hidden = evaluate;
    evaluationSection.hidden = !evaluate;
    if (evaluate) showEvaluation();
    const active = !Cloze.TERMINAL.has(job.status);
    // A running job asked to pause or cancel shows neither button until it has.
    const pausable = (job.status === "queued" || job.status === "running") &&
      !job.pause_requested && !job.cancel_requested;
    actions.replaceChildren(
      pausable ? el("button", { id: "pause", onclick: () => act("pause") }, "Pause job") : "",
      job.status === "paused" ? el("button", { id: "resume", onclick: () => act("resume") },
        "Resume job") : "",
      active ? el("button", { id: "cancel", onclick: () => act("cancel") }, "Cancel job") : "",
      // Curves, their files and their comparison are a training job's.
      evaluate ? "" : el("button", { onclick: () => openSvg() }, "Loss curve as SVG"),
      evaluate ? "" : el("button", { onclick: () => Cloze.download("/v1/jobs/" +
        encodeURIComponent(jobId) + "/tensorboard", "events.out.tfevents.cloze") },
        "TensorBoard file"),
      evaluate ? "" : el("a", { href: "/compare?ids=" + encodeURIComponent(jobId) },
        "Compare with…"));
  }

  // A test score as the model card writes it; blank while its cell is not done.
  const score = (value) => (typeof value === "number" ? value.toFixed(4) : "");
  const SIGNS = { "+": "plus", "-": "minus", "=": "tie" };

  // model - random init (or - the compared model): "+0.0523 (+)", coloured by its sign.
  function difference(value, sign) {
    if (typeof value !== "number" || !sign) return el("td", { class: "num" });
    return el("td", { class: "num" }, el("span", { class: "sign " + (SIGNS[sign] || ""),
      "data-sign": sign }, (value >= 0 ? "+" : "") + value.toFixed(4) + " (" + sign + ")"));
  }

  function showEvaluation() {
    const compare = Boolean(job.spec.compare_model_id);
    const randomInit = job.spec.random_init !== false;
    const heads = ["task", "metric", "model", compare && "compare model",
      randomInit && "random init", "baseline", randomInit && "model − random init",
      compare && "model − compare"].filter(Boolean);
    const rows = (evaluation ? evaluation.rows : []).map((r, i) => el("tr", { "data-task": i },
      el("td", { class: "wrap", title: r.task_type + " on " + r.dataset_id }, r.task),
      el("td", {}, r.metric),
      el("td", { class: "num" }, score(r.model)),
      compare ? el("td", { class: "num" }, score(r.compare_model)) : null,
      randomInit ? el("td", { class: "num" }, score(r.random_init)) : null,
      el("td", { class: "num" }, score(r.baseline), typeof r.baseline === "number" &&
        r.baseline_name ? el("span", { class: "muted small" }, " " + r.baseline_name) : null),
      randomInit ? difference(r.difference, r.sign) : null,
      compare ? difference(r.compare_difference, r.compare_sign) : null));
    const done = evaluation
      ? "cells " + evaluation.cells_done + " of " + evaluation.cells_total + " done" : "";
    evaluationSection.replaceChildren(
      el("h2", {}, "Evaluation"),
      el("p", { class: "muted", id: "evaluation-done" }, done),
      el("div", { class: "scroll" }, el("table", { id: "evaluation-table" },
        el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))),
        el("tbody", {}, rows))),
      evaluation ? el("p", { class: "muted small" }, "Each score is on the task's test " +
        "split. Difference: + the first is better, − worse, = a tie (closer than " +
        evaluation.tie + ").") : null);
  }

  async function openSvg() {
    try {
      const response = await api("/v1/jobs/" + encodeURIComponent(jobId) + "/metrics.svg");
      window.open(URL.createObjectURL(await response.blob()), "_blank", "noopener");
    } catch (error) { showError(error); }
  }

  async function act(action) {  // pause, resume or cancel
    try {
      job = await api("/v1/jobs/" + encodeURIComponent(jobId) + "/" + action, { method: "POST" });
      showJob();
    } catch (error) { showError(error); }
  }

  function series(metric, dots) {  // a metric of the table, drawn in its colour
    const out = [];
    for (const [step, point] of points) {
      if (typeof point[metric.name] === "number") out.push([step, point[metric.name]]);
    }
    out.sort((a, b) => a[0] - b[0]);
    return { name: metric.name, label: metric.label, color: metric.color, points: out, dots };
  }

  const axis = (metric) => metric.unit || metric.label;

  function redraw() {
    pending = false;
    const loss = [series(M.train_loss), series(M.eval_loss, true)];
    Chart.draw(charts.loss.svg, loss, { yLabel: "loss" });
    Chart.legend(charts.loss.legend, loss);
    const lr = [series(M.learning_rate)];
    Chart.draw(charts.lr.svg, lr, { yLabel: axis(M.learning_rate) });
    const speed = [series(M.tokens_per_second)];
    Chart.draw(charts.speed.svg, speed, { yLabel: axis(M.tokens_per_second) });
  }

  function schedule() {
    if (!pending) { pending = true; requestAnimationFrame(redraw); }
  }

  function onMetric(point) {
    points.set(point.step, { ...(points.get(point.step) || {}), ...point });
    if (job && point.step > job.progress.step) {
      job.progress.step = point.step;
      if (point.tokens_per_second) job.progress.tokens_per_second = point.tokens_per_second;
      if (point.tokens_seen) job.progress.tokens_seen = point.tokens_seen;
      if (typeof point.train_loss === "number") job.train_loss = point.train_loss;
    }
    if (job && typeof point.eval_loss === "number") job.eval_loss = point.eval_loss;
    schedule();
  }

  function onLog(line) {
    const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
    logBox.append(el("div", { class: line.level },
      new Date(line.created_at).toLocaleTimeString() + "  " + line.level + "  " + line.message));
    if (atEnd) logBox.scrollTop = logBox.scrollHeight;
    if (/checkpoint/i.test(line.message)) loadCheckpoints();
  }

  async function loadCheckpoints() {
    try {
      const list = await api("/v1/jobs/" + encodeURIComponent(jobId) + "/checkpoints");
      checkpointBody.replaceChildren(...list.data.map((c) => el("tr", {},
        el("td", { class: "num" }, fmt.int(c.step)), el("td", {}, fmt.time(c.created_at)),
        el("td", { class: "num" }, fmt.int(c.bytes)),
        el("td", { class: "wrap" }, [M.train_loss, M.eval_loss, M.accuracy].map((m) => m.name)
          .filter((k) => typeof (c.metrics || {})[k] === "number")
          .map((k) => k + " " + fmt.num(c.metrics[k])).join(", ")),
        el("td", {}, el("button", { onclick: () => publish(c.step) }, "Publish as model")))));
      if (!list.data.length) {
        checkpointBody.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "none yet")));
      }
    } catch (error) { showError(error); }
  }

  async function publish(step) {
    try {
      const model = await api("/v1/jobs/" + encodeURIComponent(jobId) + "/checkpoints/" +
        step + "/publish", { method: "POST" });
      notice("Published step " + step + " as " + model.id + ".");
    } catch (error) { showError(error); }
  }

  async function refreshJob() {
    try {
      job = await api("/v1/jobs/" + encodeURIComponent(jobId));
      showJob();
    } catch (error) { showError(error); }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const main = Cloze.main();
    main.append(facts, actions, evaluationSection, grid);
    charts = { loss: Chart.card(grid, "loss (train, eval)", "chart-loss"),
               lr: Chart.card(grid, "learning rate", "chart-lr"),
               speed: Chart.card(grid, "tokens per second", "chart-speed") };
    checkpointSection.append(el("h2", {}, "Checkpoints"),
      el("table", {}, el("thead", {}, el("tr", {}, ["step", "created", "bytes", "metrics", ""]
        .map((h) => el("th", {}, h)))), checkpointBody));
    main.append(el("h2", {}, "Events"), logBox, checkpointSection,
      el("h2", {}, "Spec"), specBox);
    redraw();
    await refreshJob();
    if (!job) return;
    loadCheckpoints();
    // The progress fields the stream does not carry (ETA) come with a slow poll.
    const timer = setInterval(() => {
      if (job && Cloze.TERMINAL.has(job.status)) clearInterval(timer);
      else if (!document.hidden) refreshJob();
    }, 5000);
    await streamJob(jobId, (event) => {
      if (event.event === "metric") onMetric(event.data);
      else if (event.event === "log") onLog(event.data);
      else if (event.event === "status") {
        job = event.data;
        showJob();
        loadCheckpoints();
        // A status event carries no table: its final cells come with the job's GET.
        if (job.type === EVALUATE) refreshJob();
      }
    }, { onError: showError });
    if (job) showJob();
  });
})();
