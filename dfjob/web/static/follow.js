// Follows a running run's log: asks /api/runs/ID/log?after=SEQ for the new lines about every second
// (with the page's session cookie), appends them as text, and reloads once the run has ended.
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log || log.dataset.follow !== "yes") { return; }
  var runId = log.dataset.run;
  var after = parseInt(log.dataset.after || "0", 10);
  var placeholder = after === 0;

  function stamp(at) {
    var date = new Date(at);
    var pad = function (n, w) { return String(n).padStart(w || 2, "0"); };
    return pad(date.getUTCHours()) + ":" + pad(date.getUTCMinutes()) + ":" + pad(date.getUTCSeconds()) +
      "." + pad(date.getUTCMilliseconds(), 3);
  }

  function poll() {
    fetch("/api/runs/" + encodeURIComponent(runId) + "/log?after=" + after, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (data === null) { setTimeout(poll, 3000); return; }
        if (data.lines.length && placeholder) { log.textContent = ""; placeholder = false; }
        data.lines.forEach(function (line) {
          log.appendChild(document.createTextNode(stamp(line.at) + " " + line.stream.padEnd(6) + " " + line.text + "\n"));
          after = line.seq;
        });
        if (data.lines.length) { log.scrollTop = log.scrollHeight; }
        if (data.status === "success" || data.status === "failed") { window.location.reload(); return; }
        setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 1000);
})();
