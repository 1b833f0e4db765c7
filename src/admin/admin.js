// The admin page: polls /api/admin/snapshot once a second with the key kept in
// sessionStorage and draws it. Read-only: it never calls anything that changes state.
(function () {
  "use strict";
  const KEY = "halley-admin-key";
  const $ = (id) => document.getElementById(id);
  const state = { charts: {}, timer: null, last: null, updates: 0 };
  window.halleyAdmin = state;

  function setStatus(text, bad) {
    $("status").textContent = text;
    $("status").className = bad ? "bad" : "";
  }

  function cell(text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "n";
    return td;
  }

  function fill(table, head, rows, empty) {
    table.replaceChildren();
    const tr = document.createElement("tr");
    head.forEach((h, i) => {
      const th = document.createElement("th");
      th.textContent = h;
      if (i > 0) th.className = "n";
      tr.appendChild(th);
    });
    table.appendChild(tr);
    if (rows.length === 0) {
      const row = document.createElement("tr");
      const td = cell(empty, false);
      td.colSpan = head.length;
      td.className = "empty";
      row.appendChild(td);
      table.appendChild(row);
    }
    for (const r of rows) {
      const row = document.createElement("tr");
      r.forEach((v, i) => row.appendChild(cell(String(v), i > 0)));
      table.appendChild(row);
    }
  }

  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  const fmt = (x) => (Math.round(x * 10) / 10).toLocaleString();

  function chart(id, series, data) {
    const el = $(id);
    const width = Math.max(300, el.clientWidth || 560);
    if (!state.charts[id]) {
      const opts = {
        width, height: 200,
        series: [{ value: (u, v) => (v == null ? "–" : clock(v)) }].concat(series.map(([label, stroke, dash]) =>
          ({ label, stroke, width: 2, dash, spanGaps: false, points: { show: false } }))),
        axes: [{ space: 70, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600], values: (u, vals) => vals.map(clock) },
          { size: 60 }],
        legend: { live: false },
      };
      state.charts[id] = new uPlot(opts, data, el);
    } else {
      state.charts[id].setData(data);
    }
    el.dataset.points = String(data[0].length);
    el.dataset.last = JSON.stringify(data.slice(1).map((s) => s[s.length - 1] ?? null));
  }

  function render(snap) {
    const node = snap.nodes[0];
    fill($("nodes"), ["node", "version", "uptime s", "sessions", "subscriptions", "held connects", "websockets"],
      snap.nodes.map((n) => [n.id, n.version, n.uptime_secs, n.sessions, n.subscriptions, n.held_connects, n.open_websockets]),
      "no nodes");
    const byTransport = node.sessions_by_transport.reduce((n, [, c]) => n + c, 0);
    fill($("transports"), ["transport", "sessions"],
      [["all", node.sessions]].concat(byTransport > 0 || node.sessions === 0 ? node.sessions_by_transport : []),
      "");
    if (byTransport === 0 && node.sessions > 0) {
      fill($("transports"), ["transport", "sessions"], [["all", node.sessions]], "");
      const note = document.createElement("tr");
      note.innerHTML = '<td colspan="2" class="empty">per-transport counts not reported by this broker version</td>';
      $("transports").appendChild(note);
    }
    fill($("channels"), ["channel", "subscribers"],
      node.busiest_channels.map((c) => [c.channel, c.subscribers]),
      "not reported by this broker version");
    fill($("drops"), ["reason", "since start"], node.drops_by_reason, "");
    fill($("refusals"), ["reason", "since start"], node.refusals_by_reason, "");
    const h = node.history;
    chart("chart-rates", [["published", "#3559e0"], ["delivered", "#12b76a", [6, 4]]], [h.t, h.publish_rate, h.delivery_rate]);
    chart("chart-latency", [["p99 ms", "#f79009"]], [h.t, h.p99_latency_ms]);
    $("latency-note").hidden = h.p99_latency_ms.some((v) => v != null);
    chart("chart-losses", [["drops", "#d92d20"], ["refusals", "#7a5af8"]], [h.t, h.drop_rate, h.refusal_rate]);
    const n = h.t.length;
    setStatus(`${node.id}: ${node.sessions} sessions, ${fmt(n ? h.publish_rate[n - 1] : 0)} publishes/s, ` +
      `${node.totals.published} published since start`, false);
  }

  async function poll() {
    const key = sessionStorage.getItem(KEY);
    if (!key) return signedOut("not signed in");
    let response;
    try {
      response = await fetch("/api/admin/snapshot", { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
    } catch (e) {
      setStatus("cannot reach the server: " + e.message, true);
      return schedule();
    }
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY);
      return signedOut("refused: that key is unknown or lacks the admin right", true);
    }
    if (!response.ok) {
      setStatus("snapshot failed: HTTP " + response.status, true);
      return schedule();
    }
    const snap = await response.json();
    state.last = snap;
    state.updates += 1;
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("signout").hidden = false;
    render(snap);
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, 1000);
  }

  function signedOut(text, bad) {
    clearTimeout(state.timer);
    $("login").hidden = false;
    $("dashboard").hidden = true;
    $("signout").hidden = true;
    setStatus(text, bad);
  }

  $("keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    setStatus("loading…", false);
    poll();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    signedOut("not signed in");
  });
  poll();
})();
