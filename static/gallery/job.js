// Live progress of a job: poll its JSON until it is done or failed, then reload the page.
(function () {
  const box = document.getElementById("job");
  if (!box) return;
  const url = box.dataset.url;
  async function poll() {
    try {
      const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (r.ok) {
        const job = await r.json();
        document.getElementById("job-state").textContent = job.state;
        document.getElementById("job-message").textContent = job.message || "";
        if (job.state === "done" || job.state === "failed") { window.location.reload(); return; }
      }
    } catch (e) { /* the next poll tries again */ }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 500);
})();
