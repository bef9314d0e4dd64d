// "/new": upload a corpus (POST /v1/datasets, with upload progress) and submit a job
// (POST /v1/jobs with an Idempotency-Key, so a double click makes one job).
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

  async function submit(e) {
    e.preventDefault();
    let body;
    try {
      body = JSON.parse(spec.value);
    } catch (error) {
      showError("the spec is not valid JSON: " + error.message);
      return;
    }
    if (datasetSelect.value && !body.dataset_id) body.dataset_id = datasetSelect.value;
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
        el("label", {}, "File (.txt, .txt.gz, .jsonl, CoNLL) ", file),
        el("label", {}, "Name ", dsName),
        el("label", {}, "Tag column (counted from 0) ", tagColumn),
        el("div", {}, el("button", { type: "submit" }, "Upload"), " ", bar)),
      el("h2", {}, "Submit a job"),
      el("form", { class: "stack", id: "job-form", onsubmit: submit },
        el("label", {}, "Dataset (used when the spec names none) ", datasetSelect),
        el("label", {}, "Spec (JSON; see the README for every field)", spec),
        el("div", {}, el("button", { type: "submit" }, "Submit"))));
    loadDatasets();
  });
})();
