// Tokens table and token page: a status change shows at once (badge, countdown); htmx then re-reads the
// table so the buttons follow the new status.
"use strict";

(function () {
  const TIMED = ["cooling", "quarantined"];

  function apply(event) {
    document.querySelectorAll('[data-token-id="' + event.token_id + '"]').forEach(function (row) {
      if (event.kind === "token.status") {
        const badge = row.querySelector("[data-status]");
        if (badge) {
          badge.textContent = event.status;
          badge.className = "badge " + event.status + " flash";
        }
        const backIn = row.querySelector("[data-back-in]");
        if (backIn) {
          backIn.textContent = "";
          if (TIMED.includes(event.status) && event.available_at) {
            const time = document.createElement("time");
            time.className = "countdown";
            time.dataset.until = event.available_at;
            time.dateTime = event.available_at;
            backIn.appendChild(time);
          }
        }
      } else if (event.kind === "lease") {
        const cell = row.querySelector("[data-last-used]");
        if (cell) cell.textContent = "just now";
      } else if (event.kind === "report" && event.outcome === "error") {
        const cell = row.querySelector("[data-last-error]");
        if (cell) {
          cell.textContent = "";
          const span = document.createElement("span");
          span.className = "bad";
          span.textContent = event.error_type || "error";
          cell.appendChild(span);
          cell.appendChild(document.createTextNode(" just now"));
        }
      }
    });
  }

  document.addEventListener("portal:live", function (e) { e.detail.forEach(apply); });
})();
