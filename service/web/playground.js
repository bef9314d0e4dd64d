// "/playground?model=m_...": fill-mask on any fill-mask model, in the Hugging Face format.
"use strict";

(() => {
  const { api, el, fmt, showError, notice } = Cloze;
  const select = el("select", { id: "model", name: "model" });
  const text = el("textarea", { id: "inputs", rows: 3 });
  const topK = el("input", { id: "top-k", type: "number", min: 1, max: 50, value: 5 });
  const results = el("div", { id: "results" });
  let models = [];

  const current = () => models.find((m) => m.id === select.value);

  function hint() {
    const model = current();
    if (model && !text.value) text.placeholder = "the " + model.mask_token + " of the lord.";
  }

  function table(answers) {
    return el("table", { class: "answers" },
      el("thead", {}, el("tr", {}, ["token", "score", "sequence"].map((h) => el("th", {}, h)))),
      el("tbody", {}, answers.map((a) => el("tr", {}, el("td", {}, a.token_str),
        el("td", { class: "num" }, fmt.num(a.score, 3)), el("td", {}, a.sequence)))));
  }

  async function run(e) {
    e.preventDefault();
    const model = current();
    if (!model) return;
    try {
      const answer = await api("/v1/models/" + encodeURIComponent(model.id) + "/fill-mask", {
        method: "POST", json: { inputs: text.value || text.placeholder,
                                parameters: { top_k: Number(topK.value) || 5 } } });
      // One mask: a flat list; several masks: a list per mask.
      const perMask = Array.isArray(answer[0]) ? answer : [answer];
      results.replaceChildren(...perMask.map((list, i) =>
        el("div", {}, el("h2", {}, "mask " + (i + 1)), table(list))));
      notice("");
    } catch (error) { showError(error); }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const form = el("form", { class: "stack", id: "fill-mask-form", onsubmit: run },
      el("label", {}, "Model ", select),
      el("label", {}, "Text (with the model's mask token)", text),
      el("label", {}, "top_k ", topK),
      el("div", {}, el("button", { type: "submit" }, "Fill the mask")));
    Cloze.main().append(form, results);
    select.addEventListener("change", () => { text.placeholder = ""; hint(); });
    try {
      const page = await api("/v1/models?limit=100");
      models = page.data.filter((m) => m.task === "fill-mask" && m.mask_token);
      const wanted = new URLSearchParams(location.search).get("model");
      select.replaceChildren(...models.map((m) => el("option", { value: m.id,
        selected: m.id === wanted }, m.name + " (" + m.id + ", " + m.architecture +
        (m.checkpoint_step !== null && m.checkpoint_step !== undefined
          ? ", step " + m.checkpoint_step : "") + ")")));
      if (!models.length) notice("No fill-mask model yet: pretrain one by masked LM (bert, roberta).");
      else if (wanted && !models.some((m) => m.id === wanted)) {
        notice(wanted + " is not a fill-mask model of yours.");
      }
      hint();
    } catch (error) { showError(error); }
  });
})();
