// The models filter: typing narrows the table's rows to those whose id, publisher, tier, type or
// use case contain every word typed. Without JS the filter stays hidden and every row shows.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll("[data-filter-for]")) {
    const table = document.getElementById(box.dataset.filterFor);
    const input = box.querySelector("input");
    const count = box.querySelector("[role=status]");
    const empty = document.getElementById("no-match");
    if (!table || !input) continue;
    const rows = Array.from(table.tBodies[0].rows);
    const apply = () => {
      const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const row of rows) {
        const text = row.dataset.search || "";
        const match = words.every((word) => text.includes(word));
        row.hidden = !match;
        if (match) shown += 1;
      }
      if (count) {
        count.textContent = words.length ? `${shown} of ${rows.length} models` : `${rows.length} models`;
      }
      if (empty) empty.hidden = shown !== 0;
    };
    input.addEventListener("input", apply);
    box.hidden = false;
    apply();
  }
});
