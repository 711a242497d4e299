// danlu dashboard, a job's page: while the job is queued or running, append what its log gains
// (GET /api/jobs/ID/log?offset=N every 2 s) to the last attempt's <pre>, and show its status.
"use strict";
(function () {
  const box = document.getElementById("job-log");
  if (!box || !danlu.data(box, "active")) return;
  const id = box.getAttribute("data-job");
  let offset = danlu.data(box, "offset");
  async function poll() {
    let answer;
    try {
      answer = await danlu.getJSON("/api/jobs/" + encodeURIComponent(id) + "/log?offset=" + offset);
    } catch (error) {
      setTimeout(poll, 5000);
      return;
    }
    if (answer.text) {
      const logs = box.querySelectorAll("pre.log");
      logs[logs.length - 1].textContent += answer.text;  // text, never HTML
      const empty = document.getElementById("no-log");
      if (empty) empty.remove();
    }
    offset = answer.offset;
    document.getElementById("job-status").textContent = answer.status;
    if (answer.finished) {
      window.location.reload();  // the final status, the Retry button, the runs
      return;
    }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
})();
