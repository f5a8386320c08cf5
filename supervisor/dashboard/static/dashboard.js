// agent-manager dashboard: server-sent events say "the queue changed"; the page then fetches its
// live fragment and swaps the sections that changed. Every text in a fragment was escaped by the
// server, and a fragment is parsed into an inert <template>, so nothing in it runs.
(function () {
  "use strict";

  const liveUrl = document.body.dataset.live;
  const connection = document.getElementById("connection");
  let busy = false;
  let again = false;

  function show(text, ok) {
    if (connection) {
      connection.textContent = text;
      connection.className = "connection " + (ok ? "ok" : "down");
    }
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    if (!(s > 0)) return "-";
    if (s < 60) return s + "s";
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + pad(Math.floor((s % 3600) / 60)) + "m";
  }

  function tick() {
    const now = Date.now() / 1000;
    for (const cell of document.querySelectorAll(".elapsed[data-since]")) {
      const before = parseFloat(cell.dataset.before || "0");
      cell.textContent = duration(before + now - parseFloat(cell.dataset.since));
    }
  }

  function recolour() {
    // The graph is laid out once per set of features; a status change only recolours its nodes.
    for (const row of document.querySelectorAll("tr[data-id]")) {
      const node = document.getElementById("node-" + row.dataset.id);
      if (node && node.dataset.status !== row.dataset.status) {
        node.dataset.status = row.dataset.status;
        node.setAttribute("class", "node s-" + row.dataset.status);
        const title = node.querySelector("title");
        if (title) title.textContent = title.textContent.replace(/: [a-z_]+$/, ": " + row.dataset.status);
      }
    }
  }

  async function refreshGraph() {
    const features = document.getElementById("features");
    const dag = document.getElementById("dag");
    if (!features || !dag || features.dataset.graphKey === dag.dataset.graphKey) return;
    const response = await fetch("/fragment/dag", { credentials: "same-origin" });
    if (!response.ok) return;
    const template = document.createElement("template");
    template.innerHTML = await response.text();
    dag.replaceChildren(template.content);
    dag.dataset.graphKey = features.dataset.graphKey;
  }

  function patchRows(old, fresh) {
    // A delta: only the rows that changed since the version this page holds.
    for (const row of fresh.querySelectorAll("tr[data-id]")) {
      const current = document.getElementById(row.id);
      if (current) current.replaceWith(row);
    }
    for (const key of ["graphKey", "running", "version"]) old.dataset[key] = fresh.dataset[key];
  }

  function swap(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    for (const fresh of template.content.querySelectorAll("section[id]")) {
      const old = document.getElementById(fresh.id);
      if (!old) continue;
      // Questions and permission requests stay as they are until one opens or closes, so a
      // half-typed answer survives the updates around it.
      if (fresh.dataset.key !== undefined && fresh.dataset.key === old.dataset.key) continue;
      if (fresh.dataset.delta === "1") patchRows(old, fresh);
      else old.replaceWith(fresh);
    }
    const summary = document.getElementById("summary");
    if (summary && summary.dataset.title) document.title = summary.dataset.title + " · agent-manager";
    tick();
  }

  async function refresh() {
    if (busy) {
      again = true; // one more fetch after this one, however many changes came meanwhile
      return;
    }
    busy = true;
    try {
      const url = new URL(liveUrl, window.location.href);
      const table = document.getElementById("features");
      if (table && table.dataset.version) url.searchParams.set("v", table.dataset.version);
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        swap(await response.text());
        await refreshGraph();
        recolour();
      } else {
        show("cannot update (" + response.status + ")", false);
      }
    } catch (err) {
      show("cannot update", false);
    } finally {
      busy = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  function running() {
    return Array.from(document.querySelectorAll("[data-running]")).some((el) => el.dataset.running !== "0");
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  // An action's message stays on the page but leaves the address bar (a reload would repeat it).
  const url = new URL(window.location.href);
  if (url.searchParams.has("notice") || url.searchParams.has("error")) {
    url.searchParams.delete("notice");
    url.searchParams.delete("error");
    window.history.replaceState(null, "", url.pathname + url.search);
  }

  setInterval(tick, 1000);
  if (!liveUrl) return;
  const events = new EventSource("/events");
  events.addEventListener("open", () => {
    show("live", true);
    refresh(); // what changed between the page's rendering and this (re)connection
  });
  events.addEventListener("error", () => show("reconnecting…", false));
  events.addEventListener("change", refresh);
  // Activity and transcripts of running sessions change without touching the database.
  events.addEventListener("tick", () => running() && refresh());
})();
