// "/datasets": the datasets (GET /v1/datasets), each linked to its view.
"use strict";

(() => {
  const { api, el, fmt, showError } = Cloze;
  const body = el("tbody", { id: "datasets-body" });

  async function refresh() {
    try {
      const page = await api("/v1/datasets?limit=100");
      body.replaceChildren(...page.data.map((d) => el("tr", { "data-dataset": d.id },
        el("td", {}, el("a", { href: "/datasets/" + encodeURIComponent(d.id), class: "id" }, d.id)),
        el("td", { class: "wrap" }, d.name),
        el("td", {}, d.format),
        el("td", {}, d.kind.replace(/_/g, " ")),
        el("td", { class: "num" }, d.documents.toLocaleString()),
        el("td", { title: fmt.time(d.created_at) }, fmt.when(d.created_at)))));
      if (!page.data.length) {
        body.append(el("tr", {}, el("td", { colspan: 6, class: "muted wrap" },
          "No datasets yet: upload one on the Upload & submit page.")));
      }
    } catch (error) {
      showError(error);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    Cloze.main().append(el("div", { class: "scroll" }, el("table", { id: "datasets" },
      el("thead", {}, el("tr", {}, ["id", "name", "format", "kind", "documents", "created"]
        .map((h) => el("th", {}, h)))),
      body)));
    refresh();
  });
})();
