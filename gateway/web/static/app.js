// Live values for the technician's page: one server-sent-event stream, each event {key: text};
// every element with data-k="key" shows the newest text. No framework, nothing loaded from elsewhere.
(function () {
  "use strict";
  var live = document.body.getAttribute("data-live");
  if (live === null || !window.EventSource) return;
  var url = "/events" + (live ? "?device=" + encodeURIComponent(live) : "");
  var source = new EventSource(url);
  source.onmessage = function (event) {
    var fields = JSON.parse(event.data);
    var cells = document.querySelectorAll("[data-k]");
    for (var i = 0; i < cells.length; i++) {
      var key = cells[i].getAttribute("data-k");
      if (Object.prototype.hasOwnProperty.call(fields, key) && cells[i].textContent !== fields[key]) {
        cells[i].textContent = fields[key];
      }
    }
    document.body.classList.remove("stale");
  };
  source.onerror = function () { document.body.classList.add("stale"); };
})();
