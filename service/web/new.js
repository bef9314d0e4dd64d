// "/new": upload a corpus (POST /v1/datasets, with upload progress), see what a job spec
// would do (a dry run) and submit it (POST /v1/jobs with an Idempotency-Key, so a double
// click makes one job).
"use strict";

(() => {
  const { api, el, fmt, showError, notice } = Cloze;
  const TEMPLATE = {
    type: "pretrain", objective: "mlm", name: "my-bert",
    model: { architecture: "bert", size: "mini" },
    tokenizer: { type: "wordpiece", vocab_size: 8192, lowercase: true },
    hyperparameters: { max_steps: 1000, batch_size: 32, sequence_length: 128,
                       learning_rate: 5e-4, warmup_steps: 100 },
  };

  const file = el("input", { type: "file", id: "file", required: true });
  const dsName = el("input", { id: "dataset-name", placeholder: "optional" });
  const tagColumn = el("input", { id: "tag-column", type: "number", placeholder: "CoNLL only" });
  const bar = el("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
  const datasetSelect = el("select", { id: "dataset" });
  const spec = el("textarea", { id: "spec", rows: 16 });
  const estimateBox = el("div", { id: "estimate", hidden: true });
  let idempotencyKey = Cloze.randomKey();

  function upload(e) {
    e.preventDefault();
    if (!file.files.length) return;
    const form = new FormData();
    if (dsName.value) form.append("name", dsName.value);
    form.append("file", file.files[0]);
    const query = tagColumn.value !== "" ? "?tag_column=" + encodeURIComponent(tagColumn.value) : "";
    // XMLHttpRequest, not fetch: it reports upload progress.
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/datasets" + query);
    const key = Cloze.apiKey();
    if (key) xhr.setRequestHeader("Authorization", "Bearer " + key);
    bar.hidden = false;
    xhr.upload.onprogress = (p) => { if (p.lengthComputable) bar.value = p.loaded / p.total; };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 201 && body) {
        // Chosen in the job form first, then said: the next click can submit on it.
        loadDatasets(body.id).then(() => notice("Uploaded " + body.id + ": " +
          fmt.int(body.documents) + " documents, " + fmt.int(body.bytes) + " bytes."));
      } else {
        const err = body && body.error ? body.error : { code: "http_" + xhr.status, message: xhr.statusText };
        showError(new Cloze.ApiError(xhr.status, err.code, err.message));
      }
    };
    xhr.onerror = () => showError("the upload failed: the server could not be reached");
    xhr.send(form);
  }

  async function loadDatasets(chosen) {
    try {
      const page = await api("/v1/datasets?limit=100");
      datasetSelect.replaceChildren(...page.data.map((d) => el("option", {
        value: d.id, selected: d.id === chosen },
        d.name + " (" + d.id + ", " + (d.kind || d.format || "") + ", " + fmt.int(d.documents) +
        " documents)")));
    } catch (error) { showError(error); }
  }

  // The spec as typed, with the chosen dataset when it names none; null (said) if not JSON.
  function specBody() {
    let body;
    try {
      body = JSON.parse(spec.value);
    } catch (error) {
      showError("the spec is not valid JSON: " + error.message);
      return null;
    }
    if (datasetSelect.value && body && !body.dataset_id) body.dataset_id = datasetSelect.value;
    return body;
  }

  // What the job would do, before spending anything (POST /v1/jobs?dry_run=true).
  async function estimate() {
    const body = specBody();
    if (body === null) return;
    try {
      const e = await api("/v1/jobs?dry_run=true", { method: "POST", json: body });
      const d = e.data, t = e.time;
      const count = (n, what) => (n === null || n === undefined ? null : fmt.int(n) + " " + what);
      const data = [count(d.documents, "documents"), count(d.tokens, "tokens"),
        count(d.train_blocks, "training blocks"), count(d.validation_blocks, "validation blocks"),
        count(d.train_examples, "training examples"),
        count(d.validation_examples, "validation examples"), count(d.labels, "labels")];
      const source = !t ? "" : t.source === "default"
        ? "nothing measured yet: a deliberately slow default rate"
        : (t.source === "measured" ? "measured on " : "scaled from another size measured on ") +
          (t.worker_kind || "a worker");
      const row = (name, value) => el("tr", {}, el("th", {}, name), el("td", { class: "wrap" }, value));
      estimateBox.replaceChildren(el("table", { id: "estimate-table" },
        row("steps", fmt.int(e.steps) + (e.epochs === null ? "" : " (" + fmt.num(e.epochs, 3) + " epochs)")),
        row("parameters", fmt.int(e.parameters)),
        row("memory", e.memory_bytes === null ? "–" : "up to " + fmt.num(e.memory_bytes / 1e6, 4) + " MB"),
        row("data", data.filter(Boolean).join(", ") + " (" + d.source + ")"),
        row("time", t ? "about " + fmt.duration(t.seconds) + " (" + fmt.int(t.tokens) + " tokens at " +
          fmt.int(Math.round(t.tokens_per_second)) + " tokens/s; " + source + ")" : "–")),
        el("p", { class: "muted" }, "A dry run: nothing was created."));
      estimateBox.hidden = false;
      notice("");
    } catch (error) { showError(error); }
  }

  async function submit(e) {
    e.preventDefault();
    const body = specBody();
    if (body === null) return;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body,
                                          headers: { "Idempotency-Key": idempotencyKey } });
      idempotencyKey = Cloze.randomKey();
      location.href = "/jobs/" + encodeURIComponent(job.id);
    } catch (error) {
      idempotencyKey = Cloze.randomKey(); // the body will change before the next try
      showError(error);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    spec.value = JSON.stringify(TEMPLATE, null, 2);
    Cloze.main().append(
      el("h2", {}, "Upload a dataset"),
      el("form", { class: "stack", id: "upload-form", onsubmit: upload },
        el("label", {}, "File (.txt, .jsonl, SQuAD .json, CoNLL, .csv, .tsv, .parquet; .gz) ",
           file),
        el("label", {}, "Name ", dsName),
        el("label", {}, "Tag column (counted from 0) ", tagColumn),
        el("div", {}, el("button", { type: "submit" }, "Upload"), " ", bar)),
      el("h2", {}, "Submit a job"),
      el("form", { class: "stack", id: "job-form", onsubmit: submit },
        el("label", {}, "Dataset (used when the spec names none) ", datasetSelect),
        el("label", {}, "Spec (JSON; see the README for every field)", spec),
        el("div", { class: "actions" }, el("button", { type: "submit" }, "Submit"),
          el("button", { type: "button", id: "estimate-button", onclick: estimate },
            "Estimate (dry run)")),
        estimateBox));
    loadDatasets();
  });
})();
