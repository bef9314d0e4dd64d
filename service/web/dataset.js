// "/datasets/{id}": one dataset (GET /v1/datasets/{id}) and its preview
// (GET /v1/datasets/{id}/preview): each column's type and role, a histogram of its text
// lengths or its label counts, and the first records.
"use strict";

(() => {
  const { api, el, showError } = Cloze;
  const id = decodeURIComponent(location.pathname.split("/").pop());

  // A histogram as a row of bars, each bar's title saying its bin and count.
  function bars(items) {
    const top = Math.max(1, ...items.map((i) => i.count));
    return el("div", { class: "bars" }, ...items.map((i) => {
      const bar = el("span", { class: "bar", title: i.label + ": " + i.count.toLocaleString() });
      // Through the CSSOM: the page's CSP refuses style attributes.
      bar.style.height = Math.max(2, Math.round(40 * i.count / top)) + "px";
      return bar;
    }));
  }

  function lengthBars(lengths) {
    const items = lengths.counts.map((count, i) => ({ count, label: lengths.edges[i] +
      (i + 1 < lengths.edges.length ? "–" + (lengths.edges[i + 1] - 1) : "+") + " chars" }));
    return el("div", {}, bars(items), el("div", { class: "muted" },
      "length " + lengths.min + "–" + lengths.max + ", mean " + lengths.mean));
  }

  function labelList(labels) {
    const rows = labels.counts.map((c) => el("li", {}, el("span", { class: "label" }, c.value),
      " " + c.count.toLocaleString()));
    if (labels.other) rows.push(el("li", { class: "muted" }, "other " +
      labels.other.toLocaleString() + " (" + labels.distinct + " distinct)"));
    return el("ul", { class: "labels" }, ...rows);
  }

  function column(c) {
    return el("tr", { "data-column": c.name },
      el("td", {}, c.name), el("td", {}, c.type), el("td", {}, c.role || "–"),
      el("td", { class: "num" }, String(c.empty)),
      el("td", { class: "wrap" }, c.labels ? labelList(c.labels) :
        c.lengths ? lengthBars(c.lengths) : "–"));
  }

  function cell(value) {
    return el("td", { class: "wrap cell" }, value === null || value === undefined ? "–" :
      typeof value === "string" ? value : JSON.stringify(value));
  }

  async function load() {
    try {
      const [dataset, preview] = await Promise.all([
        api("/v1/datasets/" + encodeURIComponent(id)),
        api("/v1/datasets/" + encodeURIComponent(id) + "/preview?limit=20")]);
      document.title = dataset.name + " · Cloze";
      const splits = Object.entries(dataset.splits || {}).map(([k, v]) => k + " " + v).join(", ");
      const keys = [...new Set(preview.records.flatMap((r) => Object.keys(r)))];
      Cloze.main().append(
        el("p", { id: "dataset-summary" }, dataset.name + ": " + dataset.format + ", " +
          dataset.kind.replace(/_/g, " ") + ", " + dataset.documents.toLocaleString() +
          " documents" + (splits ? " (" + splits + ")" : "")),
        el("h2", {}, "Columns"),
        el("div", { class: "scroll" }, el("table", { id: "columns" },
          el("thead", {}, el("tr", {}, ["column", "type", "role", "empty", "values"]
            .map((h) => el("th", {}, h)))),
          el("tbody", {}, ...preview.columns.map(column)))),
        el("h2", {}, "First records"),
        el("div", { class: "scroll" }, el("table", { id: "records" },
          el("thead", {}, el("tr", {}, ...keys.map((k) => el("th", {}, k)))),
          el("tbody", {}, ...preview.records.map((r) => el("tr", {},
            ...keys.map((k) => cell(r[k]))))))));
    } catch (error) {
      showError(error);
    }
  }

  document.addEventListener("DOMContentLoaded", load);
})();
