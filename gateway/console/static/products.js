// The import page: while an import runs, poll /products/import/<job> every 500 ms and
// move the progress bar; when it has finished, reload for the server-rendered report.
(function () {
  "use strict";
  var box = document.querySelector('[data-testid="import-job"]');
  if (!box || box.getAttribute("data-state") !== "running" || !window.fetch) return;
  var job = box.getAttribute("data-job");
  var bar = box.querySelector('[data-testid="import-progress"]');
  var rows = box.querySelector('[data-field="rows"]');
  function poll() {
    fetch("/products/import/" + encodeURIComponent(job),
          {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (j) {
        if (!j.ok) { window.location.reload(); return; }
        if (bar) { bar.max = j.bytes_total || 1; bar.value = j.bytes_done || 0; }
        if (rows) rows.textContent = String(j.rows_done || 0);
        if (j.state !== "running") { window.location.reload(); return; }
        setTimeout(poll, 500);
      })
      .catch(function () { setTimeout(poll, 500); });
  }
  setTimeout(poll, 500);
})();
