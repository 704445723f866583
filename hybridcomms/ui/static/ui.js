// hybridcomms ui: live counts (server-sent events) and the graph. No inline script anywhere: the
// Content-Security-Policy forbids it. Everything from the server is set with textContent or as SVG
// attributes, never as HTML.
"use strict";

(function () {
  var SVG = "http://www.w3.org/2000/svg";

  function age(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
    var units = [["d", 86400], ["h", 3600], ["m", 60]];
    for (var i = 0; i < units.length; i++) {
      if (seconds >= units[i][1]) return Math.round(seconds / units[i][1]) + units[i][0];
    }
    return Math.round(seconds) + "s";
  }

  function spark(series) {
    var top = Math.max(1, Math.max.apply(null, series.concat([0])));
    var step = 90 / Math.max(series.length - 1, 1);
    return series.map(function (v, i) {
      return (i * step).toFixed(1) + "," + (18 - (v / top) * 16 - 1).toFixed(1);
    }).join(" ");
  }

  // Agent names come from folder names a co-tenant chooses ("constructor", "__proto__", ...): every
  // object indexed by a name is a Map, never a plain {} (whose prototype answers for such names).
  function targets() {
    var out = new Map();
    document.querySelectorAll("[data-agent]").forEach(function (el) {
      var name = el.getAttribute("data-agent");
      if (!out.has(name)) out.set(name, []);
      out.get(name).push(el);
    });
    return out;
  }

  function own(row, f) {
    return Object.prototype.hasOwnProperty.call(row, f);
  }

  function apply(update) {
    var byAgent = targets();
    var seen = new Set();
    var changed = false;
    update.rows.forEach(function (row) {
      seen.add(row.agent);
      (byAgent.get(row.agent) || []).forEach(function (el) {
        el.querySelectorAll("[data-f]").forEach(function (cell) {
          var f = cell.getAttribute("data-f");
          if (!own(row, f)) return;
          var text = f === "oldest" ? age(row[f]) : String(row[f]);
          var link = cell.querySelector("a");
          var holder = link || cell;
          if (holder.textContent !== text) {
            holder.textContent = text;
            changed = true;
          }
          if (f === "dead") cell.classList.toggle("dead", row.dead > 0);
        });
        el.querySelectorAll("polyline[data-k]").forEach(function (line) {
          var k = line.getAttribute("data-k");
          if (row.rates && own(row.rates, k) && Array.isArray(row.rates[k])) line.setAttribute("points", spark(row.rates[k]));
        });
      });
    });
    var table = document.getElementById("fleet");
    if (table) {
      var rows = table.querySelectorAll("tr[data-agent]");
      var gone = Array.prototype.some.call(rows, function (tr) { return !seen.has(tr.getAttribute("data-agent")); });
      var added = update.rows.some(function (row) { return !byAgent.has(row.agent); });
      document.getElementById("stale").hidden = !(gone || added);
    }
    var notice = document.getElementById("changed");
    if (notice && changed) notice.hidden = false;
  }

  function base() {
    return document.body.getAttribute("data-base") || "";
  }

  function live() {
    var badge = document.getElementById("live");
    if (!window.EventSource || !badge || !document.querySelector("[data-agent]")) return;
    var source = new EventSource(base() + "/events");
    source.addEventListener("open", function () { badge.setAttribute("data-state", "on"); badge.textContent = "live"; });
    source.addEventListener("error", function () { badge.setAttribute("data-state", "off"); badge.textContent = "live: reconnecting"; });
    source.addEventListener("fleet", function (e) {
      try {
        apply(JSON.parse(e.data));
        if (badge.getAttribute("data-state") === "failed") { badge.setAttribute("data-state", "on"); badge.textContent = "live"; }
      } catch (err) {
        // never swallowed: the page says its numbers stopped following (and why, in the tooltip)
        badge.setAttribute("data-state", "failed");
        badge.textContent = "live: update failed (reload)";
        badge.title = String(err && err.message ? err.message : err);
      }
    });
  }

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function short(text) {
    return text.length > 28 ? text.slice(0, 27) + "\u2026" : text;
  }

  function drawGraph(box, data) {
    box.textContent = "";
    if (!data.nodes.length) {
      var p = document.createElement("p");
      p.className = "muted";
      p.textContent = "No messages between agents in the window.";
      box.appendChild(p);
      return;
    }
    var n = data.nodes.length;
    var size = Math.max(420, Math.min(1100, 140 + n * 38));
    var r = size / 2 - 90;
    var pos = new Map();
    var label = new Map();  // edges name nodes by id; what is shown is the label ("*", "?", "(others)")
    data.nodes.forEach(function (node) { label.set(node.id, node.label); });
    function shownName(id) { return label.has(id) ? label.get(id) : id; }
    data.nodes.forEach(function (node, i) {
      var a = (2 * Math.PI * i) / n - Math.PI / 2;
      pos.set(node.id, { x: size / 2 + r * Math.cos(a), y: size / 2 + r * Math.sin(a), a: a });
    });
    var svg = el("svg", { viewBox: "0 0 " + size + " " + size, role: "img", "aria-label": "who talks to whom" });
    var defs = el("defs", {});
    var marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 22, refY: 5, markerWidth: 8, markerHeight: 8, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" });
    marker.appendChild(el("path", { d: "M 0 0 L 10 5 L 0 10 z" }));
    defs.appendChild(marker);
    svg.appendChild(defs);
    var top = Math.max.apply(null, data.edges.map(function (e) { return e.per_minute; }).concat([0.001]));
    data.edges.forEach(function (e) {
      var s = pos.get(e.source), t = pos.get(e.target);
      if (!s || !t) return;
      var cls = e.kind + (e.dead ? " dead" : "");
      var line = el("line", { x1: s.x, y1: s.y, x2: t.x, y2: t.y, "class": cls, "stroke-width": (1 + 7 * e.per_minute / top).toFixed(2), "marker-end": "url(#arrow)" });
      line.appendChild(el("title", {}, shownName(e.source) + " → " + shownName(e.target) + ": " + e.count + " (" + e.per_minute + "/min" + (e.dead ? ", " + e.dead + " dead" : "") + ")"));
      svg.appendChild(line);
    });
    data.nodes.forEach(function (node) {
      var p = pos.get(node.id);
      var kind = node.others ? " others" : node.verified === false ? " unverified" : "";
      var g = el("g", { "class": "node" + kind });
      g.appendChild(el("circle", { cx: p.x, cy: p.y, r: 9 }));
      var right = Math.cos(p.a) >= 0;
      g.appendChild(el("text", { x: p.x + (right ? 13 : -13), y: p.y + 4, "text-anchor": right ? "start" : "end" }, short(node.label)));
      var note = node.others ? node.others + " less busy senders and recipients" : node.verified === false ? node.label + " (unverified: no mailbox of this name here; a sender is what its producer claims)" : node.label;
      g.lastChild.appendChild(el("title", {}, note));
      svg.appendChild(g);
    });
    box.appendChild(svg);
    var body = document.querySelector("#edges tbody");
    if (body) {
      body.textContent = "";
      data.edges.forEach(function (e) {
        var tr = document.createElement("tr");
        [shownName(e.source), shownName(e.target), e.kind, e.count, e.per_minute, e.dead].forEach(function (v) {
          var td = document.createElement("td");
          td.textContent = String(v);
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
    }
  }

  function graph() {
    var box = document.getElementById("graph");
    if (!box) return;
    var load = function () {
      fetch(box.getAttribute("data-src"), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) { drawGraph(box, data); })
        .catch(function () { box.textContent = "the graph could not be loaded"; });
    };
    load();
    setInterval(load, 10000);
  }

  document.addEventListener("DOMContentLoaded", function () { live(); graph(); });
})();
