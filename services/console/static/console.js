// leadscore console: small progressive enhancements. Every page works without this file.
"use strict";

// The rule-set editor: line numbers, and validation as you type with problems at their line.
function setUpEditor(textarea) {
  const gutter = document.getElementById("gutter");
  const report = document.getElementById("validation");
  let bad = new Set();
  let timer = null;
  let sent = 0;

  function drawGutter() {
    const lines = textarea.value.split("\n").length;
    const items = [];
    for (let n = 1; n <= lines; n++) {
      items.push(`<li${bad.has(n) ? ' class="bad"' : ""}>${n}</li>`);
    }
    gutter.innerHTML = items.join("");
    gutter.scrollTop = textarea.scrollTop;
  }

  function goToLine(line) {
    const lines = textarea.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((sum, text) => sum + text.length + 1, 0);
    textarea.focus();
    textarea.setSelectionRange(start, start + (lines[line - 1] || "").length);
    const lineHeight = textarea.scrollHeight / Math.max(lines.length, 1);
    textarea.scrollTop = Math.max(0, (line - 4) * lineHeight);
  }

  function show(result) {
    bad = new Set(result.problems.map((p) => p.line).filter((n) => n));
    report.replaceChildren();
    const summary = document.createElement("p");
    if (result.valid) {
      summary.className = "notice";
      summary.textContent = `Valid: ${result.rules} rules.`;
      report.append(summary);
    } else {
      summary.className = "problem";
      summary.textContent = `${result.problems.length} problem${result.problems.length === 1 ? "" : "s"}.`;
      const list = document.createElement("ul");
      list.className = "problems";
      for (const problem of result.problems) {
        const item = document.createElement("li");
        item.dataset.line = problem.line || "";
        const where = document.createElement(problem.line ? "button" : "span");
        if (problem.line) {
          where.type = "button";
          where.addEventListener("click", () => goToLine(problem.line));
          where.textContent = `Line ${problem.line}`;
        } else {
          where.textContent = "Document";
        }
        const loc = document.createElement("code");
        loc.textContent = problem.loc;
        item.append(where, ": ", loc, " ", problem.msg);
        list.append(item);
      }
      report.append(summary, list);
    }
    drawGutter();
  }

  async function validate() {
    const mine = ++sent;
    try {
      const response = await fetch(textarea.dataset.validate, {
        method: "POST",
        headers: { "Content-Type": "text/plain; charset=utf-8", "X-CSRF-Token": textarea.dataset.csrf },
        body: textarea.value,
        credentials: "same-origin",
      });
      if (mine !== sent) return; // an older answer arriving late
      if (!response.ok) {
        report.innerHTML = '<p class="problem">Could not check the rule set now (the session may have ended).</p>';
        return;
      }
      show(await response.json());
    } catch (error) {
      report.innerHTML = '<p class="problem">Could not reach the service to check the rule set.</p>';
    }
  }

  // Problems rendered by the server (after a refused publish) mark their lines too.
  for (const item of report.querySelectorAll("li[data-line]")) {
    const line = Number(item.dataset.line);
    if (line) bad.add(line);
  }
  textarea.addEventListener("input", () => {
    drawGutter();
    clearTimeout(timer);
    timer = setTimeout(validate, 300);
  });
  textarea.addEventListener("scroll", () => { gutter.scrollTop = textarea.scrollTop; });
  drawGutter();
}

// A running job: poll its progress, reload when it ends.
function followJob(box) {
  const bar = document.getElementById("progress-bar");
  const text = document.getElementById("progress-text");
  async function poll() {
    try {
      const response = await fetch(box.dataset.progress, { credentials: "same-origin" });
      if (response.ok) {
        const job = await response.json();
        if (job.status !== "running") { window.location.reload(); return; }
        bar.max = job.total || 1;
        bar.value = job.done;
        text.textContent = `${job.done} of ${job.total ?? "?"} leads replayed.`;
      }
    } catch (error) { /* the next poll tries again */ }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 500);
}

document.addEventListener("DOMContentLoaded", () => {
  const textarea = document.querySelector("textarea[data-validate]");
  if (textarea) setUpEditor(textarea);
  const job = document.getElementById("job-progress");
  if (job) followJob(job);
});
