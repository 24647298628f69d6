// Live values for the technician's page: one server-sent-event stream, each event {key: text};
// every element with data-k="key" shows the newest text (a point's "....error" key is
// sent only while it has one). No framework, nothing loaded from elsewhere.
(function () {
  "use strict";
  var live = document.body.getAttribute("data-live");
  if (live === null || !window.EventSource) return;
  var url = "/events" + (live ? "?device=" + encodeURIComponent(live) : "");
  var source = new EventSource(url);
  var own = function (object, key) { return Object.prototype.hasOwnProperty.call(object, key); };
  source.onmessage = function (event) {
    var fields = JSON.parse(event.data);
    var cells = document.querySelectorAll("[data-k]");
    for (var i = 0; i < cells.length; i++) {
      var key = cells[i].getAttribute("data-k"), text = null;
      if (own(fields, key)) {
        text = fields[key];
      } else if (key.slice(-6) === ".error" && own(fields, key.slice(0, -6))) {
        text = "";  // a point's error comes only while it has one: its value without it means none
      }
      if (text !== null && cells[i].textContent !== text) {
        cells[i].textContent = text;
      }
    }
    document.body.classList.remove("stale");
  };
  source.onerror = function () { document.body.classList.add("stale"); };
})();
