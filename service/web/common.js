// What every dashboard page shares: the API key (kept in sessionStorage, sent as
// "Authorization: Bearer"), API calls with the house error format, server-sent events
// read with fetch (EventSource cannot send the key), and small DOM helpers. Every value
// from the API goes into the page as text, never as HTML.
"use strict";

const Cloze = (() => {
  const KEY = "cloze.apiKey";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  // The metric table (jobspec/metrics.py), embedded in the page by the server: name ->
  // { name, side, tag, label, unit, color, column }. Pages name metrics through it.
  const METRICS = Object.fromEntries(JSON.parse(
    document.getElementById("metric-table").textContent).map((m) => [m.name, m]));

  const apiKey = () => sessionStorage.getItem(KEY) || "";

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    const key = apiKey();
    if (key) headers.set("Authorization", "Bearer " + key);
    return headers;
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function errorOf(response) {
    let code = "http_" + response.status, message = response.statusText || "request failed";
    try {
      const body = await response.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch (_) { /* not the house format: keep the status line */ }
    if (response.status === 401) notice("This API needs a key: enter it above (" + message + ")", true);
    return new ApiError(response.status, code, message);
  }

  // fetch() against the API: JSON in, JSON out (or the Response for other types).
  async function api(path, { method = "GET", json, body, headers, signal } = {}) {
    const init = { method, headers: authHeaders(headers), signal };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers.set("Content-Type", "application/json");
    } else if (body !== undefined) {
      init.body = body;
    }
    const response = await fetch(path, init);
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response;
  }

  // Download a route's answer (which may need the key) as a file.
  async function download(path, fallbackName) {
    const response = await api(path);
    const disposition = response.headers.get("content-disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: match ? match[1] : fallbackName });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // GET /v1/jobs/{id}/stream as server-sent events, parsed here; reconnects with
  // Last-Event-ID (the server ends each stream after a while) until the job's final status
  // has arrived or `signal` aborts. onEvent({event, id, data}).
  async function streamJob(jobId, onEvent, { signal, onError } = {}) {
    let last = null, retry = 1000;
    for (;;) {
      if (signal && signal.aborted) return;
      let finished = false;
      try {
        const headers = last ? { "Last-Event-ID": last } : {};
        const response = await fetch("/v1/jobs/" + encodeURIComponent(jobId) + "/stream",
          { headers: authHeaders(headers), signal, cache: "no-store" });
        if (!response.ok) {
          const error = await errorOf(response);
          if (response.status !== 429 && response.status < 500) throw error;
          onError && onError(error);
        } else {
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "", fields = { event: "message", id: null, data: [] };
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            const lines = buffer.split(/\r\n|\r|\n/);
            buffer = lines.pop();
            for (const line of lines) {
              if (line === "") {
                if (fields.data.length) {
                  if (fields.id !== null) last = fields.id;
                  const event = { event: fields.event, id: fields.id,
                                  data: JSON.parse(fields.data.join("\n")) };
                  onEvent(event);
                  if (event.event === "status" && TERMINAL.has(event.data.status)) finished = true;
                }
                fields = { event: "message", id: null, data: [] };
                continue;
              }
              if (line.startsWith(":")) continue;
              const colon = line.indexOf(":");
              const name = colon < 0 ? line : line.slice(0, colon);
              let text = colon < 0 ? "" : line.slice(colon + 1);
              if (text.startsWith(" ")) text = text.slice(1);
              if (name === "event") fields.event = text;
              else if (name === "data") fields.data.push(text);
              else if (name === "id") fields.id = text;
              else if (name === "retry" && /^\d+$/.test(text)) retry = Number(text);
            }
          }
        }
      } catch (error) {
        if (signal && signal.aborted) return;
        if (error instanceof ApiError) { onError && onError(error); return; }
        onError && onError(error);
      }
      if (finished) return;
      await sleep(retry);
    }
  }

  // el("a", {href: "/x", class: "y"}, "text", child, ...): children are text or nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function notice(text, isError) {
    const box = document.getElementById("notice");
    if (!box) return;
    box.textContent = text || "";
    box.hidden = !text;
    box.classList.toggle("error", Boolean(isError));
  }

  function showError(error) {
    notice(error instanceof ApiError ? error.message + " (" + error.code + ")" : String(error), true);
  }

  const fmt = {
    num(value, digits = 4) {
      if (value === null || value === undefined || Number.isNaN(value)) return "–";
      if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en-US");
      const text = Number(value).toPrecision(digits);
      // Trailing zeros of a fraction only: 320 stays 320 (not "32"), 6.250 reads 6.25.
      return text.includes(".") ? text.replace(/\.?0+(?=e|$)/, "") : text;
    },
    int: (value) => (value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US")),
    duration(seconds) {
      if (seconds === null || seconds === undefined) return "–";
      const s = Math.round(seconds);
      if (s < 60) return s + " s";
      if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
      return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    },
    time: (iso) => (iso ? new Date(iso).toLocaleString() : "–"),
    // A table's timestamp, short (the full one is the cell's title): "05:17" today,
    // "Nov 28, 23:09" on another day.
    when(iso) {
      if (!iso) return "–";
      const date = new Date(iso);
      const clock = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
      return date.toDateString() === new Date().toDateString()
        ? date.toLocaleTimeString("en-US", clock)
        : date.toLocaleString("en-US", { month: "short", day: "numeric", ...clock });
    },
  };

  // A sweep's best trial: the one the API chose once the sweep ended, else the best of the
  // trials that have a value so far (the API names none while the sweep runs).
  function bestTrial(sweep) {
    if (sweep.best_job_id) return sweep.trials.find((t) => t.job_id === sweep.best_job_id) || null;
    const sign = sweep.spec.direction === "maximize" ? -1 : 1;
    return sweep.trials.filter((t) => typeof t.value === "number")
      .reduce((best, t) => (!best || sign * t.value < sign * best.value ? t : best), null);
  }

  function statusBadge(status) {
    return el("span", { class: "status " + status, "data-status": status }, status);
  }

  function progressBar(step, total) {
    const share = total ? Math.min(1, step / total) : 0;
    const bar = el("span", { class: "bar" }, el("span"));
    bar.firstChild.style.width = (share * 100).toFixed(1) + "%";
    return el("span", {}, bar, fmt.int(step) + " / " + fmt.int(total));
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function setupKeyForm() {
    const form = document.getElementById("key-form");
    const input = document.getElementById("key-input");
    const state = document.getElementById("key-state");
    const show = () => { state.textContent = apiKey() ? "key set for this tab" : "no key"; };
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (input.value.trim()) sessionStorage.setItem(KEY, input.value.trim());
      input.value = "";
      location.reload();
    });
    document.getElementById("key-clear").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      location.reload();
    });
    show();
  }

  document.addEventListener("DOMContentLoaded", setupKeyForm);
  const main = () => document.getElementById("main");

  return { api, apiKey, download, streamJob, el, notice, showError, fmt, statusBadge,
           bestTrial, progressBar, randomKey, sleep, main, TERMINAL, METRICS, ApiError };
})();
