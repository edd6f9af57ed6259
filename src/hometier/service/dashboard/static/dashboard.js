// hometier dashboard: sort a table by clicking a column header, filter rows as you type.
// The pages work without it (the search form and the sort menu run on the server).
"use strict";

function sortKey(cell) {
  const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  const n = Number(raw);
  return raw !== "" && !Number.isNaN(n) ? [0, n] : [1, raw.toLowerCase()];
}

function compare(a, b) {
  if (a[0] !== b[0]) return a[0] - b[0];
  return a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0;
}

function sortTable(table, column, th) {
  const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
  for (const other of th.parentNode.cells) other.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((r1, r2) => dir * compare(sortKey(r1.cells[column]), sortKey(r2.cells[column])));
  for (const row of rows) body.appendChild(row);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach((th, column) => {
      if (th.dataset.sortable === undefined) return;
      th.tabIndex = 0;
      th.addEventListener("click", () => sortTable(table, column, th));
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, column, th); }
      });
    });
  }
  for (const input of document.querySelectorAll("input[data-filter]")) {
    const table = document.getElementById(input.dataset.filter);
    if (!table) continue;
    input.addEventListener("input", () => {
      const text = input.value.trim().toLowerCase();
      for (const row of table.tBodies[0].rows) {
        row.hidden = text !== "" && !(row.dataset.user || "").toLowerCase().includes(text);
      }
    });
  }
});
