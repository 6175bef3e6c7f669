// Hours chart (Chart.js, vendored) and on-demand fragments; no inline script, the CSP forbids it.
document.addEventListener("DOMContentLoaded", () => {
  const data = document.getElementById("chart-data");
  const canvas = document.getElementById("hours-chart");
  if (data && canvas && window.Chart) {
    const d = JSON.parse(data.textContent);
    new window.Chart(canvas, {
      type: "bar",
      // Hours of a downgraded account (billing-v1.md §8) stacked in grey: active, not billed
      // and those of fixed-term or device-day licences in blue: not billed by the hour
      data: {labels: d.labels, datasets: [{label: "active hours per day", data: d.values, backgroundColor: "#2e9d57"}]
        .concat((d.other || []).some((n) => n > 0)
          ? [{label: "fixed-term or device-day licence", data: d.other, backgroundColor: "#3b6fb6"}] : [])
        .concat((d.downgraded || []).some((n) => n > 0)
          ? [{label: "downgraded, not billed", data: d.downgraded, backgroundColor: "#9e9e9e"}] : [])},
      options: {animation: false, maintainAspectRatio: false,
        scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true}}},
    });
    canvas.dataset.rendered = "1";
  }
  document.querySelectorAll("[data-fragment]").forEach((btn) => {
    btn.addEventListener("click", async () => {
      const target = document.getElementById(btn.dataset.target);
      target.textContent = "loading…";
      const resp = await fetch(btn.dataset.fragment, {credentials: "same-origin"});
      target.innerHTML = await resp.text();
    });
  });
});
// Heatmap cells carry no attributes (a page holds tens of thousands): what a cell means is
// computed from its row's day and its column, as a tooltip on hover and, on a click or a tap
// (touch screens have no hover), in the line under the table with a link to the hour's evidence.
const heatNames = {a: "active", i: "inactive", u: "unknown", b: "bridged"};
function heatCell(ev) {
  const td = ev.target.closest && ev.target.closest("table.heat td");
  if (!td) return null;
  const hour = `${td.parentElement.dataset.day}T${String(td.cellIndex - 1).padStart(2, "0")}:00:00Z`;
  return {td, hour, state: heatNames[td.className] || ""};
}
document.addEventListener("mouseover", (ev) => {
  const cell = heatCell(ev);
  if (cell && !cell.td.title) cell.td.title = `${cell.hour} ${cell.state}`;
});
function pickCell(cell) {
  const table = cell.td.closest("table.heat");
  const pick = table.nextElementSibling;
  if (!pick || !pick.classList.contains("heat-pick")) return;
  pick.textContent = `${cell.hour}: ${cell.state}`;
  if (cell.state === "active" || cell.state === "inactive") {  // hours with signed heartbeats
    const link = document.createElement("a");
    link.href = `${table.dataset.evidence}?hour=${encodeURIComponent(cell.hour)}`;
    link.textContent = "signed heartbeats of that hour";
    pick.append(" — ", link);
  }
}
document.addEventListener("click", (ev) => {
  const cell = heatCell(ev);
  if (cell) pickCell(cell);
});
// The keyboard: one tab stop per map (its first hour), arrow keys move between hours and say
// each one's state in the line under the map (aria-live), Enter or Space as a click.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.heat").forEach((table) => {
    table.setAttribute("aria-label", `Hours of ${table.dataset.instance}: arrow keys move, the line below says each hour's state`);
    const first = table.querySelector("td");
    if (first) first.tabIndex = 0;
  });
});
const heatMoves = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]};
document.addEventListener("keydown", (ev) => {
  const cell = heatCell(ev);
  if (!cell) return;
  if (ev.key === "Enter" || ev.key === " ") {
    ev.preventDefault();
    pickCell(cell);
    return;
  }
  const move = heatMoves[ev.key];
  if (!move) return;
  ev.preventDefault();
  const row = cell.td.parentElement;
  const rows = [...row.parentElement.querySelectorAll("tr[data-day]")];
  const to = rows[rows.indexOf(row) + move[0]];
  const next = to && to.cells[cell.td.cellIndex + move[1]];
  if (!next || next.tagName !== "TD") return;
  cell.td.tabIndex = -1;
  next.tabIndex = 0;
  next.focus();
  pickCell(heatCell({target: next}));
});
// A form that starts something an operator cannot take back by accident (a payment failure
// mails the customer and starts its grace period) asks first.
document.addEventListener("submit", (ev) => {
  const ask = ev.target.dataset && ev.target.dataset.confirm;
  if (ask && !window.confirm(ask)) ev.preventDefault();
});
