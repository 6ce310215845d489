// The console's live pages: /lanes, /alarms, /audits and /devices follow
// /events/stream (server-sent events). Plain DOM, no library; every text goes in as textContent.
(function () {
  "use strict";
  var page = document.body.getAttribute("data-page");
  if (["/lanes", "/alarms", "/audits", "/devices"].indexOf(page) < 0 || !window.EventSource) return;
  var msgs = {};
  try { msgs = JSON.parse(document.getElementById("messages").textContent); } catch (e) {}
  function t(s) { return msgs[s] || s; }
  var STATE = {idle: "idle", settled: "settled", fault: "fault", ok: "ok", alarm: "alarm"};
  var CAUSE = {weight_short: "weight short", weight_over: "weight over", eas: "EAS gate",
               device: "device"};
  var STATUS = {open: "open", ack: "acknowledged", override: "overridden",
                rescan: "rescan requested"};
  var FINDING = {theft: "theft", mistake: "mistake", false_alarm: "false alarm"};
  function grams(x) {
    if (x === null || x === undefined || isNaN(x)) return "\u2013";
    return Number(x).toLocaleString("en-GB", {minimumFractionDigits: 1, maximumFractionDigits: 1});
  }
  function when(ts) {
    if (!ts) return "";
    var d = new Date(ts * 1000), p = function (n) { return (n < 10 ? "0" : "") + n; };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }
  function field(root, name) { return root.querySelector('[data-field="' + name + '"]'); }
  function set(root, name, text) { var el = field(root, name); if (el) el.textContent = text; }
  function expl(e) {
    var kind = (e.kind === "missing" || e.kind === "extra") ? t(e.kind) : e.kind;
    return kind + " " + (e.gtin || "") + (e.qty ? " \u00d7 " + e.qty : "") + " " +
      Math.round((e.score || 0) * 100) + "%";
  }
  function cssEscape(s) { return window.CSS && CSS.escape ? CSS.escape(s) : s.replace(/"/g, '\\"'); }

  function laneCard(c) {
    var box = document.getElementById("lanes");
    if (!box) return;
    var card = box.querySelector('[data-testid="lane-card"][data-lane="' + cssEscape(c.lane) + '"]');
    if (!card) {
      var tpl = document.getElementById("lane-card-template");
      card = tpl.content.firstElementChild.cloneNode(true);
      card.setAttribute("data-lane", c.lane);
      var cards = Array.prototype.slice.call(box.children), before = null;
      for (var i = 0; i < cards.length; i++) {
        if (cards[i].getAttribute("data-lane") > c.lane) { before = cards[i]; break; }
      }
      box.insertBefore(card, before);
      var none = document.getElementById("no-lanes");
      if (none) none.remove();
    }
    card.className = "card state-" + c.state;
    set(card, "lane", c.lane);
    set(card, "state", t(STATE[c.state] || c.state));
    set(card, "weight", grams(c.weight_g));
    set(card, "settled", grams(c.settled_g));
    set(card, "sigma", grams(c.sigma_g));
    set(card, "order", c.order_no || "\u2013");
    set(card, "order_status", c.order_status ? t(c.order_status) : "");
    set(card, "verdict", c.verdict ? t(c.verdict) : "\u2013");
    set(card, "z", c.z === null || c.z === undefined ? "" : " (z " + Number(c.z).toFixed(2) + ")");
    set(card, "eas", c.eas === "alarm" ? t("alarm") : (c.eas ? t("clear") : "\u2013"));
    set(card, "faults", c.faults && c.faults.length ?
      c.faults.map(function (f) { return f.device + " " + (f.code || ""); }).join(", ") : t("none"));
    var ol = field(card, "explanations");
    if (ol) {
      ol.textContent = "";
      (c.explanations || []).forEach(function (e) {
        var li = document.createElement("li"); li.textContent = expl(e); ol.appendChild(li);
      });
    }
  }

  function alarmRow(a) {
    var body = document.getElementById("alarms");
    if (!body) return;
    var row = body.querySelector('[data-alarm="' + cssEscape(a.id) + '"]');
    if (!row) {
      var tpl = document.getElementById("alarm-row-template");
      row = tpl.content.querySelector("tr").cloneNode(true);
      row.setAttribute("data-alarm", a.id);
      row.setAttribute("data-order", a.order_no);
      row.setAttribute("data-lane", a.lane);
      row.querySelectorAll('input[name="lane"]').forEach(function (el) { el.value = a.lane; });
      row.querySelectorAll('input[name="order_no"]').forEach(function (el) { el.value = a.order_no; });
      body.insertBefore(row, body.firstChild);
      var none = document.getElementById("no-alarms");
      if (none) none.remove();
    }
    row.className = "status-" + a.status;
    set(row, "at", when(a.at));
    set(row, "lane", a.lane);
    set(row, "order", a.order_no);
    set(row, "cause", t(CAUSE[a.cause] || a.cause));
    var text = "";
    if (a.measured_g !== null && a.measured_g !== undefined) {
      text = grams(a.measured_g) + " g / " + grams(a.expected_g) + " g \u00b1 " + grams(a.band_g) + " g ";
    }
    text += (a.explanations || []).slice(0, 3).map(expl).join("; ") + (a.message || "");
    set(row, "explanation", text);
    set(row, "status", t(STATUS[a.status] || a.status) +
      (a.actions || []).map(function (x) { return " " + x.staff; }).join(""));
    var ol = field(row, "actions");
    if (ol) {
      ol.textContent = "";
      (a.actions || []).forEach(function (x) {
        var li = document.createElement("li");
        li.setAttribute("data-testid", "alarm-action");
        li.setAttribute("data-action", x.action || "");
        li.setAttribute("data-staff", x.staff || "");
        li.textContent = [when(x.at), x.staff, t(STATUS[x.action] || x.action)]
          .concat(x.reason ? [x.reason] : [])
          .concat(x.finding ? [t(FINDING[x.finding] || x.finding)] : []).join(" \u00b7 ");
        ol.appendChild(li);
      });
    }
  }

  // /audits: a requested audit joins the queue; a recorded one leaves it for the
  // recorded list, and the stats line counts it. From a snapshot or the history
  // (live false) a recorded audit only leaves the queue: the page, read from the
  // service, already counted it or holds only the newest.
  function foundRow(gtin) {
    var tpl = document.getElementById("found-row-template");
    var row = tpl.content.firstElementChild.cloneNode(true);
    row.querySelector('input[name="found_gtin"]').value = gtin || "";
    return row;
  }
  function auditRow(a, live) {
    var pending = document.getElementById("audits-pending");
    var done = document.getElementById("audits-done");
    if (!pending || !done || !a || !a.order_no) return;
    var sel = '[data-order="' + cssEscape(a.order_no) + '"]';
    var waiting = pending.querySelector(sel), recorded = done.querySelector(sel);
    if (a.state === "done") {
      if (waiting) waiting.remove();
      if (recorded || live === false) return;
      var tpl = document.getElementById("audit-done-template");
      var row = tpl.content.querySelector("tr").cloneNode(true);
      row.setAttribute("data-order", a.order_no);
      row.setAttribute("data-outcome", a.outcome || "");
      row.setAttribute("data-finding", a.finding || "");
      set(row, "at", when(a.recorded_at));
      set(row, "order", a.order_no);
      set(row, "kind", a.kind ? t(a.kind) : "\u2013");
      set(row, "outcome", a.outcome ? t(a.outcome) : "\u2013");
      set(row, "finding", a.finding ? t(FINDING[a.finding] || a.finding) : "\u2013");
      set(row, "found", (a.found || []).map(function (f) {
        return typeof f === "object" && f ? f.gtin + " \u00d7 " + f.qty : String(f);
      }).join(", "));
      set(row, "staff", a.staff || "\u2013");
      done.insertBefore(row, done.firstChild);
      var none = document.getElementById("no-done");
      if (none) none.remove();
      var stats = document.querySelector('[data-testid="audit-stats"]');
      if (stats) {
        var n = Number(field(stats, "audits").textContent) + 1;
        var bad = Number(field(stats, "discrepancies").textContent) +
          (a.outcome === "discrepancy" ? 1 : 0);
        set(stats, "audits", String(n));
        set(stats, "discrepancies", String(bad));
        set(stats, "rate", (100 * bad / n).toFixed(1));
      }
    } else if (a.state === "pending" && !waiting && !recorded) {
      var ptpl = document.getElementById("audit-row-template");
      var prow = ptpl.content.querySelector("tr").cloneNode(true);
      prow.setAttribute("data-order", a.order_no);
      prow.querySelector('input[name="order_no"]').value = a.order_no;
      set(prow, "at", when(a.requested_at));
      set(prow, "order", a.order_no);
      set(prow, "kind", a.kind ? t(a.kind) : "\u2013");
      set(prow, "reason", (a.reason || "") + (a.probability === null ||
        a.probability === undefined ? "" : " p " + Number(a.probability).toFixed(2)));
      var ul = field(prow, "items"), box = field(prow, "found");
      (a.items || []).forEach(function (it) {
        var li = document.createElement("li");
        li.textContent = it.gtin + " " + (it.name || "") + " \u00d7 " + it.qty;
        ul.appendChild(li);
      });
      var blanks = Array.prototype.slice.call(box.querySelectorAll(".found-row"));
      (a.items || []).forEach(function (it) {
        box.insertBefore(foundRow(it.gtin), blanks[0] || null);
      });
      pending.insertBefore(prow, pending.firstChild);
      var nothing = document.getElementById("no-pending");
      if (nothing) nothing.remove();
    }
  }

  function deviceRow(d) {
    var body = document.getElementById("devices");
    if (!body) return;
    var key = d.lane + "/" + d.device;
    var row = body.querySelector('[data-key="' + cssEscape(key) + '"]') ||
      body.querySelector('[data-lane="' + cssEscape(d.lane) + '"][data-device="' + cssEscape(d.device) + '"]');
    if (!row) {
      row = document.createElement("tr");
      row.setAttribute("data-testid", "device-row");
      row.setAttribute("data-lane", d.lane);
      row.setAttribute("data-device", d.device);
      for (var i = 0; i < 6; i++) row.appendChild(document.createElement("td"));
      body.appendChild(row);
      var none = document.getElementById("no-devices");
      if (none) none.remove();
    }
    row.setAttribute("data-key", key);
    var cells = row.children, vals = [d.lane, d.device, d.kind, d.code || "", d.message || "", when(d.at)];
    for (var j = 0; j < 6; j++) cells[j].textContent = vals[j];
  }

  function apply(msg) {
    if (msg.lane) laneCard(msg.lane);
    if (msg.alarm) alarmRow(msg.alarm);
    if (msg.device) deviceRow(msg.device);
    if (msg.audit) auditRow(msg.audit);
  }
  var live = document.querySelector('[data-testid="live-state"]');
  var es = new EventSource("/events/stream");
  es.addEventListener("snapshot", function (ev) {
    var s = JSON.parse(ev.data);
    (s.lanes || []).forEach(laneCard);
    (s.alarms || []).slice().reverse().forEach(alarmRow);
    (s.devices || []).forEach(deviceRow);
    (s.audits || []).slice().reverse().forEach(function (a) { auditRow(a, false); });
    if (live) { live.textContent = t("live"); live.setAttribute("data-live", "on"); }
  });
  ["settled", "fault", "verdict", "alarm", "device", "order", "audit"].forEach(function (topic) {
    es.addEventListener(topic, function (ev) { apply(JSON.parse(ev.data)); });
  });
  // the service's history, read again after the events socket reconnected
  es.addEventListener("history", function (ev) {
    var h = JSON.parse(ev.data);
    (h.alarms || []).forEach(alarmRow);
    (h.audits || []).forEach(function (a) { auditRow(a, false); });
  });
  es.addEventListener("resync", function () { window.location.reload(); });
  es.onerror = function () {
    if (live) { live.textContent = t("reconnecting"); live.setAttribute("data-live", "retry"); }
  };
})();
