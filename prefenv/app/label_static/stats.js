// The stats page of `prefenv label`: renders /api/stats, refreshed every 10 s.
"use strict";

(() => {
  const REFRESH_MS = 10000;
  const $ = (id) => document.getElementById(id);

  function number(value, digits = 2) {
    if (value === null || value === undefined) return "–";
    return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`;
  }

  function cell(tag, text) {
    const node = document.createElement(tag);
    node.textContent = text;
    return node;
  }

  function definitions(target, entries) {
    const nodes = [];
    for (const [term, value] of entries) nodes.push(cell("dt", term), cell("dd", value));
    $(target).replaceChildren(...nodes);
  }

  function annotators(stats) {
    const columns = ["annotator", "labels", "skips", "median s / label", "mean s / label",
      "gold answered", "gold correct", "gold accuracy"];
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const column of columns) head.append(cell("th", column));
    const body = table.createTBody();
    for (const [name, s] of Object.entries(stats)) {
      const row = body.insertRow();
      const values = [name, number(s.labels), number(s.skips), number(s.median_seconds),
        number(s.mean_seconds), number(s.gold_answered), number(s.gold_correct), percent(s.gold_accuracy)];
      for (const value of values) row.append(cell("td", value));
    }
    if (!Object.keys(stats).length) {
      const row = body.insertRow();
      const empty = cell("td", "no labels yet");
      empty.colSpan = columns.length;
      row.append(empty);
    }
    $("annotators").replaceChildren(table);
  }

  function render(data) {
    const run = data.run;
    $("run").textContent = `${run.run}${run.env ? " · " + run.env : ""} · overlap ${run.overlap} · gold rate ${percent(run.gold_rate)}`;
    annotators(data.annotators);
    const a = data.agreement;
    definitions("agreement", [
      ["queries with overlap", number(a.items_with_overlap)],
      ["pairwise agreement", percent(a.pairwise_agreement)],
      ["Cohen's kappa (2 annotators)", number(a.cohen_kappa, 3)],
      ["Fleiss' kappa (3+ per query)", number(a.fleiss_kappa, 3)],
      ["Krippendorff's alpha (nominal)", number(a.krippendorff_alpha, 3)],
      ["note", a.note || "–"],
    ]);
    const q = data.queries;
    definitions("queries", [
      ["open", number(q.open)], ["fully answered", number(q.answered)], ["waiting", number(q.waiting)],
      ["labels given", number(q.labels)], ["skips", number(q.skips)],
      ["labels on gold questions", number(q.gold_labels)], ["used in training (harvested)", number(q.harvested)],
    ]);
    definitions("sources", [["from people", number(data.sources.human)], ["from simulated teachers", number(data.sources.simulated)]]);
  }

  async function refresh() {
    try {
      const response = await fetch("/api/stats", { headers: { Accept: "application/json" }, credentials: "same-origin" });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
      $("error").hidden = true;
      render(data);
    } catch (error) {
      $("error").textContent = `cannot read the stats: ${error.message}`;
      $("error").hidden = false;
    }
    setTimeout(refresh, REFRESH_MS);
  }

  refresh();
})();
