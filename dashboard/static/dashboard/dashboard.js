// Shared by every page: the live websocket, countdowns, copy buttons, confirmations, auto-submitting selects.
"use strict";

(function () {
  // --- Countdowns: <time data-until="ISO"> shows how long until then, every second. -----------------
  function formatSpan(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m) return m + "m " + String(s).padStart(2, "0") + "s";
    return s + "s";
  }
  window.portalFormatSpan = formatSpan;

  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-until]").forEach(function (el) {
      const left = (Date.parse(el.dataset.until) - now) / 1000;
      el.textContent = left > 0 ? "back in " + formatSpan(left) : "due now";
      el.classList.toggle("bad", left <= 0);
    });
  }
  setInterval(tick, 1000);
  document.addEventListener("DOMContentLoaded", tick);
  document.addEventListener("htmx:afterSettle", tick);

  // --- Forms: confirmations, selects that submit themselves, copy buttons. ---------------------------
  document.addEventListener("submit", function (event) {
    const form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
  }, true);
  document.addEventListener("change", function (event) {
    if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
  });
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const field = document.querySelector(button.dataset.copy);
    field.select();
    const done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 2000); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });

  // --- Live events: /ws/dashboard/ passes on what happens to the organization's tokens and leases. ---
  // Each batch becomes a `portal:live` DOM event (detail: the events); pages that show counts also get a
  // `live-refresh` on <body> at most every REFRESH_MS, which htmx answers by re-reading their data.
  const REFRESH_MS = 1500;
  let refreshTimer = null, lastRefresh = 0, retry = 500;

  function scheduleRefresh() {
    if (refreshTimer) return;
    const wait = Math.max(250, REFRESH_MS - (Date.now() - lastRefresh));
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      lastRefresh = Date.now();
      if (window.htmx) window.htmx.trigger(document.body, "live-refresh");
    }, wait);
  }

  function setStatus(state, title) {
    const dot = document.getElementById("live-status");
    if (!dot) return;
    dot.className = "live-dot " + state;
    dot.title = "Live updates: " + title;
  }

  function connect() {
    const path = document.body.dataset.liveUrl;
    if (!path || !window.WebSocket) return;
    const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path);
    let pinger = null;
    socket.onopen = function () {
      retry = 500;
      setStatus("on", "connected");
      document.body.dataset.live = "on";
      pinger = setInterval(function () { socket.send(JSON.stringify({ type: "ping" })); }, 30000);
    };
    socket.onmessage = function (message) {
      let frame;
      try { frame = JSON.parse(message.data); } catch (e) { return; }
      if (frame.type !== "live.events") return;
      document.dispatchEvent(new CustomEvent("portal:live", { detail: frame.events }));
      scheduleRefresh();
    };
    socket.onclose = function (e) {
      clearInterval(pinger);
      document.body.dataset.live = "off";
      // Closed for the session's sake (logged out, deactivated, demoted): retrying cannot help.
      if (e.code === 4401) { setStatus("off", "logged out: reload the page"); return; }
      if (e.code === 4403) { setStatus("off", "no longer allowed: reload the page"); return; }
      setStatus("off", "disconnected, retrying");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }
  document.addEventListener("DOMContentLoaded", connect);
})();
