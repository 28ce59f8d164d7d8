// The live dashboard: one Server-Sent Events stream of Dashboard messages
// (canonical proto3 JSON: lowerCamelCase names, 64-bit integers as strings,
// fields at their default value left out), rendered as they arrive.
"use strict";

(function () {
  const STREAM_URL = "/v1/dashboard:watch";
  // Updates come every second; three silent seconds mean the stream is dead
  // even if the connection looks open (a proxy holding it, a stalled server).
  const SILENCE_MS = 3000;
  // EventSource retries by itself after an error, but not once it has given
  // up (readyState CLOSED, e.g. after an HTTP error status); the watchdog then
  // opens a new one, no sooner than this after the last attempt.
  const REOPEN_MS = 1000;

  const $ = (id) => document.getElementById(id);
  const num = (v) => (v === undefined || v === null ? 0 : Number(v));

  const intFormat = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
  const oneDecimal = new Intl.NumberFormat("en", {
    minimumFractionDigits: 1,
    maximumFractionDigits: 1,
  });

  // Shows `value` in element `id`, formatted, and keeps the raw number in
  // data-value so that scripts (and tests) need not parse the formatting.
  function show(id, value, format) {
    const el = $(id);
    if (value === null || !Number.isFinite(value)) {
      el.textContent = "—";
      delete el.dataset.value;
      return;
    }
    el.textContent = format.format(value);
    el.dataset.value = String(value);
  }

  function setStatus(state) {
    const el = $("status");
    if (el.dataset.state !== state) {
      el.dataset.state = state;
      el.textContent = state;
    }
  }

  function renderProbe(latency) {
    const l = latency || {};
    const stored = num(l.stored);
    show("probe-highest", stored > 0 ? num(l.highestNumber) : null, intFormat);
    // With no probe in the window the average is undefined, not zero.
    const recent = num(l.recent);
    show("probe-transit", recent > 0 ? num(l.avgToStoreMs) : null, oneDecimal);
    show("probe-ingest", recent > 0 ? num(l.avgToIngestMs) : null, oneDecimal);
    show("probe-recent", recent, intFormat);
  }

  let chart = null;

  function chartWidth() {
    return Math.max(200, $("avg-chart").clientWidth);
  }

  function renderAverages(averages, readAtMs) {
    // The newest window is usually still filling; show complete ones only.
    const complete = (averages || [])
      .map((a) => ({
        start: Date.parse(a.windowStart) / 1000,
        end: Date.parse(a.windowStart) + num(a.windowMs),
        average: num(a.average),
        count: num(a.count),
      }))
      .filter((a) => a.end <= readAtMs)
      .reverse();
    const latest = complete[complete.length - 1];
    show("avg-latest", latest ? latest.average : null, oneDecimal);
    show("avg-count", latest ? latest.count : null, intFormat);
    const data = [complete.map((a) => a.start), complete.map((a) => a.average)];
    if (chart === null) {
      chart = new uPlot(
        {
          width: chartWidth(),
          height: 180,
          legend: { show: false },
          scales: { x: { time: true } },
          series: [{}, { label: "average", stroke: "#2a6fdb", width: 2 }],
        },
        data,
        $("avg-chart"),
      );
    } else {
      chart.setData(data);
    }
  }

  function renderSensors(metrics, windowMs) {
    $("sensor-window").textContent = `last ${Math.round(num(windowMs) / 1000)} s`;
    const rows = (metrics || []).map((m) => {
      const g = (m.groups || [])[0];
      const cells = g
        ? [
            intFormat.format(num(g.count)),
            ...[g.avg, g.min, g.max].map((v) => oneDecimal.format(num(v))),
            // Sketched percentiles are within 1% of the exact ones.
            ...[g.p50, g.p95, g.p99].map(
              (v) => (g.percentilesSketched ? "≈" : "") + oneDecimal.format(num(v)),
            ),
            g.unit || "",
          ]
        : ["0", "—", "—", "—", "—", "—", "—", ""];
      const tr = document.createElement("tr");
      tr.dataset.metric = m.metric;
      for (const text of [m.metric, ...cells]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    });
    $("sensor-rows").replaceChildren(...rows);
  }

  function renderSms(sms) {
    const s = sms || {};
    show("sms-sent", num(s.sent), intFormat);
    show("sms-failed", num(s.failed), intFormat);
    const handled = num(s.sent) + num(s.failed);
    show("sms-avg", handled > 0 ? num(s.avgMs) : null, oneDecimal);
  }

  function renderFleet(fleet) {
    const f = fleet || {};
    const status = f.status;
    const reporting = f.state === "FLEET_REPORT_STATE_REPORTING" && status;
    $("fleet-figures").hidden = !reporting;
    if (!reporting) {
      $("fleet-state").textContent = "no fleet reporting";
      $("fleet-state").title = f.detail || "";
      return;
    }
    const phase = (status.phase || "FLEET_PHASE_UNSPECIFIED")
      .replace("FLEET_PHASE_", "")
      .toLowerCase();
    $("fleet-state").textContent = `fleet ${phase}`;
    $("fleet-state").title = "";
    $("fleet-collected").textContent =
      `${intFormat.format(num(status.collected))} / ${intFormat.format(num(status.target))}`;
    $("fleet-live").textContent =
      `${num(status.liveWorkers)} of ${num(status.maxWorkers)}`;
    $("fleet-faults").textContent = `${num(status.crashes)} / ${num(status.restarts)}`;
    show("fleet-elapsed", num(status.elapsedSeconds), oneDecimal);
  }

  function render(update) {
    const readAtMs = update.readAt ? Date.parse(update.readAt) : Date.now();
    renderProbe(update.latency);
    renderAverages(update.averages, readAtMs);
    renderSensors(update.metrics, update.sensorWindowMs);
    renderSms(update.sms);
    renderFleet(update.fleet);
    const updated = $("updated");
    updated.dateTime = new Date(readAtMs).toISOString();
    updated.textContent = new Date(readAtMs).toLocaleTimeString("en-GB");
  }

  let source = null;
  let lastEventAt = 0;
  let openedAt = 0;
  // The server wants a token this browser has not signed in with. An
  // EventSource cannot see why it failed, so a plain request asks.
  let signedOut = false;
  let checking = false;

  function notLive() {
    setStatus(signedOut ? "signed-out" : "reconnecting");
  }

  async function checkSignIn() {
    if (checking) return;
    checking = true;
    try {
      const response = await fetch("/v1/stats", { headers: { accept: "application/json" } });
      signedOut = response.status === 401 || response.status === 403;
    } catch (e) {
      // The server is down, not refusing: plain reconnecting.
      signedOut = false;
    } finally {
      checking = false;
    }
    $("sign-in").hidden = !signedOut;
    if (signedOut) setStatus("signed-out");
  }

  $("sign-in").addEventListener("click", () => {
    window.location.assign("/login");
  });

  function open() {
    if (source !== null) {
      source.close();
    }
    openedAt = Date.now();
    source = new EventSource(STREAM_URL);
    source.onmessage = (event) => {
      let update;
      try {
        update = JSON.parse(event.data);
      } catch (e) {
        console.warn("dashboard: an update that is not JSON was skipped", e);
        return;
      }
      lastEventAt = Date.now();
      signedOut = false;
      $("sign-in").hidden = true;
      setStatus("live");
      render(update);
      document.dispatchEvent(new CustomEvent("tributary:update", { detail: update }));
    };
    source.onerror = () => {
      notLive();
      checkSignIn();
    };
  }

  function watchdog() {
    const now = Date.now();
    const quiet = now - Math.max(lastEventAt, openedAt);
    if (source.readyState === EventSource.CLOSED && now - openedAt >= REOPEN_MS) {
      notLive();
      open();
    } else if (quiet > SILENCE_MS) {
      notLive();
      open();
    }
  }

  window.addEventListener("resize", () => {
    if (chart !== null) {
      chart.setSize({ width: chartWidth(), height: 180 });
    }
  });

  open();
  setInterval(watchdog, 500);
})();
