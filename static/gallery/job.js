// Live progress of a job: poll its JSON, show its state and message, and reload the page when
// its state changes (the page then shows the new step, and at the end the result).
(function () {
  const box = document.getElementById("job");
  if (!box) return;
  const url = box.dataset.url;
  const first = document.getElementById("job-state").textContent;
  async function poll() {
    try {
      const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (r.ok) {
        const job = await r.json();
        document.getElementById("job-state").textContent = job.state;
        document.getElementById("job-message").textContent = job.message || "";
        // A new step (the build ended, the copy began, it ended): show the page anew.
        if (job.state !== first) { window.location.reload(); return; }
      }
    } catch (e) { /* the next poll tries again */ }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 500);
})();
