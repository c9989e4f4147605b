/*
 * Herald demo page: a live quote board fed by one event stream (topic quotes/*).
 * Plain ES5 so it runs in old engines and with an EventSource polyfill; when
 * window.EventSource is missing (or ?transport=poll is given) it long-polls /poll instead,
 * with the same board.
 */
(function () {
  "use strict";

  var TOPIC = "quotes/*";
  var TOKEN_KEY = "herald.client";
  var LOG_SIZE = 40;

  var state = {
    token: clientToken(),
    rows: {},            // symbol -> { tr, price }
    received: 0,
    reconnects: 0,
    opened: false,
    lastId: null,
    replay: null         // { since: ms, count: n } after a resumed reconnect
  };

  function $(id) { return document.getElementById(id); }

  function clientToken() {
    var token = null;
    try { token = window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
    if (!token || !/^[A-Za-z0-9_-]{8,128}$/.test(token)) {
      var alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
      token = "web-";
      for (var i = 0; i < 20; i++) token += alphabet.charAt(Math.floor(Math.random() * alphabet.length));
      try { window.sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* keep it for this page */ }
    }
    return token;
  }

  function setBadge(kind, text) {
    var badge = $("badge");
    badge.className = "badge " + kind;
    badge.textContent = text || kind;
  }

  function notice(text) {
    var box = $("notice");
    if (!text) { box.hidden = true; return; }
    box.textContent = text;
    box.hidden = false;
  }

  function log(kind, text, id) {
    var list = $("log");
    var item = document.createElement("li");
    var left = document.createElement("span");
    var label = document.createElement("span");
    label.className = "kind " + (kind === "reset" ? "reset" : "");
    label.textContent = kind;
    left.appendChild(label);
    left.appendChild(document.createTextNode(" " + text));
    var right = document.createElement("code");
    right.textContent = id ? "#" + id : "";
    item.appendChild(left);
    item.appendChild(right);
    list.insertBefore(item, list.firstChild);
    while (list.children.length > LOG_SIZE) list.removeChild(list.lastChild);
  }

  function fixed(value, digits) {
    var n = Number(value);
    return isFinite(n) ? n.toFixed(digits) : "–";
  }

  function signed(value, digits, suffix) {
    var n = Number(value);
    if (!isFinite(n)) return "–";
    return (n > 0 ? "+" : "") + n.toFixed(digits) + (suffix || "");
  }

  function clock(ms) {
    var d = new Date(ms || Date.now());
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  function updateFacts() {
    $("received").textContent = String(state.received);
    $("reconnects").textContent = String(state.reconnects);
    $("last-id").textContent = state.lastId || "–";
    $("replayed").textContent = state.replay ? String(state.replay.count) : "–";
    var count = 0;
    for (var key in state.rows) if (state.rows.hasOwnProperty(key)) count++;
    $("count").textContent = count + (count === 1 ? " symbol" : " symbols");
    var empty = $("rows").querySelector("tr.empty");
    if (empty && count > 0) empty.parentNode.removeChild(empty);
  }

  function cell(tr, className) {
    var td = document.createElement("td");
    td.className = className;
    tr.appendChild(td);
    return td;
  }

  function ensureRow(symbol, name) {
    var row = state.rows[symbol];
    if (row) return row;
    var tr = document.createElement("tr");
    tr.setAttribute("data-symbol", symbol);
    tr.className = "added";
    cell(tr, "symbol").textContent = symbol;
    cell(tr, "name").textContent = name || "";
    cell(tr, "num price");
    cell(tr, "num change");
    cell(tr, "num percent");
    cell(tr, "num volume");
    cell(tr, "num time");
    // Keep rows sorted by symbol.
    var body = $("rows");
    var before = null;
    for (var i = 0; i < body.children.length; i++) {
      var other = body.children[i].getAttribute("data-symbol");
      if (other && other > symbol) { before = body.children[i]; break; }
    }
    body.insertBefore(tr, before);
    row = { tr: tr, price: null };
    state.rows[symbol] = row;
    return row;
  }

  function removeRow(symbol) {
    var row = state.rows[symbol];
    if (!row) return;
    delete state.rows[symbol];
    row.tr.className = "removing";
    setTimeout(function () { if (row.tr.parentNode) row.tr.parentNode.removeChild(row.tr); }, 800);
  }

  function clearBoard() {
    for (var symbol in state.rows) {
      if (state.rows.hasOwnProperty(symbol) && state.rows[symbol].tr.parentNode) {
        state.rows[symbol].tr.parentNode.removeChild(state.rows[symbol].tr);
      }
    }
    state.rows = {};
  }

  function applyQuote(q) {
    var row = ensureRow(q.symbol, q.name);
    var tds = row.tr.getElementsByTagName("td");
    var direction = row.price === null ? "" : (q.price > row.price ? "up" : (q.price < row.price ? "down" : ""));
    tds[1].textContent = q.name || "";
    tds[2].textContent = fixed(q.price, 2);
    tds[3].textContent = signed(q.change, 2);
    tds[4].textContent = signed(q.changePercent, 2, "%");
    tds[5].textContent = Number(q.volume || 0).toLocaleString ? Number(q.volume || 0).toLocaleString() : String(q.volume);
    tds[6].textContent = clock(q.time);
    var trend = q.change > 0 ? "up" : (q.change < 0 ? "down" : "");
    tds[3].className = "num change " + trend;
    tds[4].className = "num percent " + trend;
    if (direction) {
      row.tr.className = "";
      // Restart the flash animation.
      void row.tr.offsetWidth;
      row.tr.className = "flash-" + direction;
    }
    row.price = q.price;
  }

  /* One event from either transport: type, data (text), id, and when it arrived. */
  function handle(type, data, id) {
    if (id) state.lastId = id;
    var payload = null;
    try { payload = JSON.parse(data); } catch (e) { payload = null; }
    if (type === "quote" || type === "listing") {
      state.received++;
      if (state.replay && payload && payload.time && payload.time < state.replay.since) state.replay.count++;
    }
    if (type === "quote" && payload && payload.symbol) {
      applyQuote(payload);
      log("quote", payload.symbol + " " + fixed(payload.price, 2), id);
    } else if (type === "listing" && payload && payload.symbol) {
      if (payload.action === "remove") {
        removeRow(payload.symbol);
        log("listing", payload.symbol + " removed", id);
      } else {
        ensureRow(payload.symbol, payload.name);
        log("listing", payload.symbol + " added", id);
      }
    } else if (type === "herald.hello") {
      if (payload && payload.resumed) {
        state.replay = { since: new Date().getTime(), count: 0 };
      }
      log("hello", payload && payload.resumed ? "resumed" : "new stream", null);
    } else if (type === "herald.reset") {
      var reason = payload ? payload.reason : "reset";
      notice("The server could not replay what this page missed (" + reason + "): the board was reloaded from current state.");
      clearBoard();
      state.replay = null;
      log("reset", reason, id);
    }
    updateFacts();
  }

  /* --- EventSource transport --------------------------------------------------------- */

  function streamURL() {
    var url = "/events?topic=" + encodeURIComponent(TOPIC) + "&client=" + encodeURIComponent(state.token);
    // Polyfills that cannot send headers resume through the query string.
    if (state.lastId && !state.nativeResume) url += "&lastEventId=" + encodeURIComponent(state.lastId);
    return url;
  }

  function connectEventSource() {
    $("transport").textContent = "EventSource";
    setBadge(state.opened ? "reconnecting" : "connecting");
    var source = new window.EventSource(streamURL());
    // The browser's own EventSource resends Last-Event-ID by itself on reconnects.
    state.nativeResume = true;
    var types = ["quote", "listing", "herald.hello", "herald.reset", "message"];
    for (var i = 0; i < types.length; i++) {
      (function (type) {
        source.addEventListener(type, function (event) { handle(type, event.data, event.lastEventId); });
      })(types[i]);
    }
    source.onopen = function () {
      if (state.opened) {
        state.reconnects++;
        updateFacts();
      }
      state.opened = true;
      setBadge("live");
    };
    source.onerror = function () {
      if (source.readyState === 2) {
        // The browser gave up (e.g. 503): start a fresh stream, resuming from our last id.
        setBadge("reconnecting");
        state.nativeResume = false;
        setTimeout(connectEventSource, 2000 + Math.floor(Math.random() * 1000));
      } else {
        setBadge("reconnecting");
      }
    };
  }

  /* --- Long-polling transport -------------------------------------------------------- */

  function poll() {
    var url = "/poll?topic=" + encodeURIComponent(TOPIC) + "&client=" + encodeURIComponent(state.token) + "&timeout=25";
    if (state.lastId) url += "&lastEventId=" + encodeURIComponent(state.lastId);
    var xhr = new XMLHttpRequest();
    xhr.open("GET", url, true);
    xhr.onreadystatechange = function () {
      if (xhr.readyState !== 4) return;
      if (xhr.status === 200) {
        if (!state.opened) state.opened = true;
        setBadge("live", "live (polling)");
        var answer = null;
        try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = null; }
        if (answer) {
          if (answer.reset) handle("herald.reset", JSON.stringify({ reason: "history-truncated" }), answer.lastEventId);
          for (var i = 0; i < answer.events.length; i++) {
            var event = answer.events[i];
            handle(event.type || "message", event.data, event.id);
          }
          state.lastId = answer.lastEventId;
          updateFacts();
        }
        setTimeout(poll, 0);
      } else {
        setBadge("reconnecting");
        state.reconnects++;
        updateFacts();
        setTimeout(poll, 2000 + Math.floor(Math.random() * 1000));
      }
    };
    xhr.send(null);
  }

  function start() {
    $("token").textContent = state.token;
    var forcePoll = /[?&]transport=poll\b/.test(window.location.search);
    if (window.EventSource && !forcePoll) {
      connectEventSource();
    } else {
      $("transport").textContent = "long-poll (/poll)";
      setBadge("connecting");
      poll();
    }
  }

  // The footer's curl command, with this page's own address so it works when pasted.
  var hint = document.getElementById('curl-hint');
  if (hint && window.location && window.location.host) {
    hint.textContent = "curl -X POST '" + window.location.protocol + '//' + window.location.host +
      "/events?topic=quotes/XYZ&type=quote&retain=1' -H 'Content-Type: application/json'" +
      " --data-binary '{\"symbol\":\"XYZ\",\"price\":101.5}'";
  }

  window.heraldDemo = state;  // for tests and the curious
  start();
})();
