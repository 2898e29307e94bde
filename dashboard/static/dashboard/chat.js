// The chat page, over /ws/chat/ (protocol in portal/consumers.py): one conversation, streamed deltas,
// a Stop button that sends chat.cancel, the label of the token that served, errors in plain words.
"use strict";

(function () {
  let socket = null, current = null, counter = 0, retry = 500;
  const history = [];
  const $ = function (id) { return document.getElementById(id); };

  function setState(text) { $("chat-state").textContent = text; }

  function bubble(kind, text) {
    const el = document.createElement("div");
    el.className = "bubble " + kind;
    el.textContent = text || "";
    $("transcript").appendChild(el);
    $("transcript").scrollTop = $("transcript").scrollHeight;
    return el;
  }

  function meta(el, text) {
    let m = el.querySelector(".meta");
    if (!m) { m = document.createElement("span"); m.className = "meta"; el.appendChild(m); }
    m.textContent = text;
  }

  function busy(on) {
    $("chat-send").disabled = on;
    $("chat-stop").disabled = !on;
  }

  function plainWords(frame) {
    const pool = $("chat-pool").value;
    switch (frame.error_type) {
      case "no_token_available": {
        let text = "No token of pool '" + pool + "' can be used right now: every one is cooling, quarantined, invalid or disabled.";
        if (frame.retry_after) {
          const at = new Date(Date.now() + frame.retry_after * 1000);
          text += " The first one comes back in " + window.portalFormatSpan(frame.retry_after) + " (at " + at.toLocaleTimeString() + ").";
        } else {
          text += " None comes back by itself: add a token, or release or enable one.";
        }
        return text;
      }
      case "overloaded": return "The portal is carrying all the streams it may at once. Try again in a moment.";
      case "credits_exceeded": return "Hugging Face says the token has run out of its monthly credits; it is quarantined. (" + frame.error + ")";
      case "invalid_credentials": return "Hugging Face refused the token as invalid; it is out of rotation until validated. (" + frame.error + ")";
      case "rate_limited": return "Hugging Face is rate-limiting the pool's tokens. Try again shortly. (" + frame.error + ")";
      case "timeout": return "Hugging Face did not answer in time. (" + frame.error + ")";
      case "validation": return "The request was refused: " + frame.error;
      case "permission_denied": return "Your role may not chat.";
      case "not_found": return "No such pool: " + pool + ".";
      default: return frame.error || "Something went wrong.";
    }
  }

  function onFrame(frame) {
    if (!current || frame.id !== current.id) {
      if (frame.type === "chat.error" && !frame.id) bubble("error", plainWords(frame));
      return;
    }
    if (frame.type === "chat.start") {
      current.token = frame.token_label;
      meta(current.el, "via token " + frame.token_label);
    } else if (frame.type === "chat.delta") {
      current.text += frame.content;
      current.el.firstChild.nodeValue = current.text;
      $("transcript").scrollTop = $("transcript").scrollHeight;
    } else if (frame.type === "chat.end") {
      current.el.classList.remove("streaming");
      const stopped = frame.finish_reason === "cancelled";
      meta(current.el, (current.token ? "via token " + current.token : "") + (stopped ? " · stopped" : frame.finish_reason ? " · " + frame.finish_reason : ""));
      if (current.text) history.push({ role: "assistant", content: current.text });
      current = null;
      busy(false);
      setState("ready");
    } else if (frame.type === "chat.error") {
      current.el.remove();
      if (current.text) {
        const kept = bubble("assistant", current.text);
        meta(kept, "via token " + current.token + " · interrupted");
      }
      bubble("error", plainWords(frame));
      history.pop();  // the question that failed is not part of the conversation
      current = null;
      busy(false);
      setState("ready");
    }
  }

  function connect() {
    socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat/");
    socket.onopen = function () { retry = 500; setState("ready"); busy(false); };
    socket.onmessage = function (m) { try { onFrame(JSON.parse(m.data)); } catch (e) { console.error(e); } };
    socket.onclose = function (e) {
      if (current) onFrame({ type: "chat.error", id: current.id, error: "The connection to the portal was lost.", error_type: "connection" });
      $("chat-send").disabled = true;
      if (e.code === 4403) { setState("your role may not chat"); return; }
      if (e.code === 4401) { setState("logged out: reload the page"); return; }
      setState("disconnected, retrying…");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }

  function send() {
    const text = $("chat-text").value.trim();
    const model = $("chat-model").value.trim();
    if (!text || !model || current || !socket || socket.readyState !== WebSocket.OPEN) return;
    history.push({ role: "user", content: text });
    bubble("user", text);
    $("chat-text").value = "";
    const id = "c" + Date.now() + "-" + (++counter);
    const el = bubble("assistant streaming", "");
    el.appendChild(document.createTextNode(""));  // the deltas go here; the meta line comes after it
    current = { id: id, el: el, text: "", token: null };
    busy(true);
    setState("streaming…");
    const request = { type: "chat.request", id: id, model: model, messages: history.slice(), pool: $("chat-pool").value };
    const maxTokens = parseInt($("chat-max-tokens").value, 10);
    if (maxTokens > 0) request.max_tokens = maxTokens;
    socket.send(JSON.stringify(request));
  }

  function loadModels() {
    const url = $("chat").dataset.modelsUrl;
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (data) {
      const list = $("model-list");
      list.textContent = "";
      (data.models || []).forEach(function (name) {
        const option = document.createElement("option");
        option.value = name;
        list.appendChild(option);
      });
      if (!$("chat-model").value && data.models && data.models.length) $("chat-model").value = data.models[0];
    }).catch(function () {});
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!$("chat")) return;
    busy(false);
    $("chat-send").disabled = true;
    $("chat-form").addEventListener("submit", function (e) { e.preventDefault(); send(); });
    $("chat-text").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
    });
    $("chat-stop").addEventListener("click", function () {
      if (current) socket.send(JSON.stringify({ type: "chat.cancel", id: current.id }));
    });
    $("chat-clear").addEventListener("click", function () {
      history.length = 0;
      $("transcript").textContent = "";
    });
    loadModels();
    connect();
  });
})();
