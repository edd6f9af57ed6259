// hometier dashboard: sort a small table by clicking a column header; search homes as you
// type. The pages work without it (the search form and the column links run on the server).
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

// The homes table is one page of many: a search asks the server for the first page of
// matches and swaps the table in place (the address bar follows, so it is a link).
function searchAsYouType(form) {
  let timer = null;
  let seq = 0;
  const run = async () => {
    try {
      await swap();
    } catch (e) {
      form.submit(); // whatever went wrong, the server-side search still works
    }
  };
  const swap = async () => {
    const url = form.action + "?" + new URLSearchParams(new FormData(form)).toString();
    const mine = ++seq;
    // The Hub's cookie counts for a script's GET only with the XSRF token (JupyterHub
    // >= 4.1), which the page carries.
    const resp = await fetch(url, {
      credentials: "same-origin",
      redirect: "error",
      headers: { Accept: "text/html", "X-XSRFToken": form.dataset.xsrf || "" },
    });
    if (!resp.ok || mine !== seq) return;
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const fresh = doc.getElementById("homes-section");
    const here = document.getElementById("homes-section");
    if (fresh && here) {
      here.replaceWith(document.adoptNode(fresh));
      history.replaceState(null, "", url);
    }
  };
  for (const input of form.querySelectorAll("[data-autosubmit]")) {
    const event = input.tagName === "SELECT" ? "change" : "input";
    input.addEventListener(event, () => {
      clearTimeout(timer);
      timer = setTimeout(run, 250);
    });
  }
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
  const form = document.getElementById("homes-filter");
  if (form) searchAsYouType(form);
});
