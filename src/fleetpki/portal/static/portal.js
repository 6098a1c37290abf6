// fleetpki portal: the only script of our own (the CSP allows no inline script).
// It shows times in the browser's zone (UTC stays in the title, shown on hover), and on a
// device's page keeps the telemetry table and chart live over server-sent events.
// Everything here is an enhancement: without it the pages show UTC and stored telemetry.
"use strict";

(function () {
  const COLOURS = ["#0b5cad", "#c2410c", "#1b6e35", "#7e22ce", "#a16207", "#0e7490"];
  const MAX_POINTS = 300;
  let stream = null;

  function localTimes(root) {
    const format = new Intl.DateTimeFormat(undefined, {
      year: "numeric", month: "short", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
    });
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      if (el.dataset.localised) return;
      const when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      el.title = el.textContent.trim();
      el.textContent = format.format(when);
      el.dataset.localised = "1";
    });
  }

  function numericFields(body) {
    let value;
    try { value = JSON.parse(body); } catch (e) { return {}; }
    const out = {};
    if (value && typeof value === "object" && !Array.isArray(value)) {
      Object.keys(value).forEach(function (key) {
        if (typeof value[key] === "number" && isFinite(value[key])) out[key] = value[key];
      });
    }
    return out;
  }

  function Chart(canvas, legend) {
    this.canvas = canvas;
    this.legend = legend;
    this.points = [];  // {t: ms, fields: {name: number}}
    this.names = [];
  }

  Chart.prototype.add = function (message) {
    const fields = numericFields(message.body);
    const names = Object.keys(fields);
    if (!names.length) return;
    names.forEach(function (n) { if (this.names.indexOf(n) < 0) this.names.push(n); }, this);
    this.points.push({ t: Date.parse(message.enqueuedTime), fields: fields });
    if (this.points.length > MAX_POINTS) this.points.shift();
  };

  Chart.prototype.draw = function () {
    const c = this.canvas, g = c.getContext("2d");
    const w = c.width, h = c.height, pad = 36;
    g.clearRect(0, 0, w, h);
    g.font = "12px system-ui, sans-serif";
    g.fillStyle = "#5b6470";
    if (!this.points.length) {
      g.fillText("No numeric telemetry yet.", pad, h / 2);
      this.renderLegend();
      return;
    }
    let lo = Infinity, hi = -Infinity;
    const n = this.points.length;
    this.points.forEach(function (p) {
      Object.keys(p.fields).forEach(function (k) {
        lo = Math.min(lo, p.fields[k]); hi = Math.max(hi, p.fields[k]);
      });
    });
    if (hi === lo) { hi += 1; lo -= 1; }
    // One step per message, oldest left: a device often sends several within a second,
    // which a time axis would draw on top of each other.
    const x = function (i) { return pad + (n === 1 ? 0.5 : i / (n - 1)) * (w - 2 * pad); };
    const y = function (v) { return h - pad + 10 - ((v - lo) / (hi - lo)) * (h - pad - 20); };
    g.strokeStyle = "#d5d9df";
    g.beginPath(); g.moveTo(pad, h - pad + 10); g.lineTo(w - pad, h - pad + 10); g.stroke();
    g.fillText(hi.toFixed(1), 2, y(hi) + 4);
    g.fillText(lo.toFixed(1), 2, y(lo) + 4);
    this.names.forEach(function (name, i) {
      g.strokeStyle = COLOURS[i % COLOURS.length];
      g.lineWidth = 2;
      g.beginPath();
      let started = false;
      this.points.forEach(function (p, i) {
        if (!(name in p.fields)) return;
        const px = x(i), py = y(p.fields[name]);
        if (started) g.lineTo(px, py); else { g.moveTo(px, py); started = true; }
      });
      g.stroke();
      // A dot on every value, so that a single message shows too.
      g.fillStyle = COLOURS[i % COLOURS.length];
      this.points.forEach(function (p, j) {
        if (!(name in p.fields)) return;
        g.beginPath();
        g.arc(x(j), y(p.fields[name]), 3, 0, 2 * Math.PI);
        g.fill();
      });
    }, this);
    this.renderLegend();
  };

  Chart.prototype.renderLegend = function () {
    if (!this.legend) return;
    const last = this.points.length ? this.points[this.points.length - 1].fields : {};
    this.legend.replaceChildren();
    this.names.forEach(function (name, i) {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch swatch-" + (i % COLOURS.length);
      li.appendChild(swatch);
      li.appendChild(document.createTextNode(name + (name in last ? ": " + last[name] : "")));
      this.legend.appendChild(li);
    }, this);
  };

  function appendRow(tbody, message) {
    const tr = document.createElement("tr");
    const cells = [String(message.id), null, message.body];
    cells.forEach(function (text, i) {
      const td = document.createElement("td");
      if (i === 1) {
        const time = document.createElement("time");
        time.setAttribute("datetime", message.enqueuedTime);
        time.dataset.local = "";
        time.textContent = message.enqueuedTime.replace("T", " ").replace("Z", " UTC");
        td.appendChild(time);
      } else {
        td.textContent = text;
      }
      if (i === 2) td.className = "mono wrap";
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
    while (tbody.rows.length > MAX_POINTS) tbody.deleteRow(0);
    localTimes(tr);
  }

  function liveTelemetry(root) {
    const table = root.querySelector("table#telemetry[data-stream]");
    if (!table || table.dataset.live) return;
    table.dataset.live = "1";
    const chart = new Chart(document.getElementById("telemetry-chart"),
                            document.getElementById("chart-legend"));
    table.querySelectorAll("tr[data-message]").forEach(function (tr) {
      try { chart.add(JSON.parse(tr.dataset.message)); } catch (e) { /* not JSON */ }
    });
    chart.draw();
    const state = document.getElementById("live-state");
    if (stream) stream.close();
    stream = new EventSource(table.dataset.stream);
    stream.addEventListener("open", function () { if (state) state.textContent = "live"; });
    stream.addEventListener("error", function () { if (state) state.textContent = "reconnecting…"; });
    stream.addEventListener("message", function (event) {
      const message = JSON.parse(event.data);
      appendRow(table.tBodies[0], message);
      chart.add(message);
      chart.draw();
      if (state) state.textContent = "live: message " + message.id;
    });
  }

  function init(root) {
    localTimes(root);
    liveTelemetry(root);
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:beforeSwap", function () {
    if (stream) { stream.close(); stream = null; }
  });
  document.addEventListener("htmx:afterSettle", function () { init(document); });
})();
