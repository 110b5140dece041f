// The labelling page: choose a response (click or 1-K), optionally mark wrong
// tokens (click, shift-click for a range, or drag), submit (Enter) or skip (S).
"use strict";
(function () {
  const main = document.getElementById("item");
  if (!main) {
    if (document.getElementById("empty")) setTimeout(() => location.reload(), 10000);
    return;
  }
  const itemId = Number(main.dataset.itemId);
  const k = Number(main.dataset.k);
  const labeler = main.dataset.labeler;
  const samples = Array.from(document.querySelectorAll(".sample"));
  const marks = samples.map(() => new Set());
  const status = document.getElementById("status");
  const submit = document.getElementById("submit");
  let choice = null;
  let anchor = null;  // the last clicked token {j, i}: shift-click extends from it
  let busy = false;

  function choose(j) {
    choice = j;
    samples.forEach((s, n) => s.classList.toggle("chosen", n === j));
    submit.disabled = false;
    status.textContent = `Response ${j + 1} chosen: Enter submits`;
  }

  function setMark(j, i, on) {
    const tok = samples[j].querySelector(`.tok[data-i="${i}"]`);
    if (!tok) return;
    if (on) marks[j].add(i); else marks[j].delete(i);
    tok.classList.toggle("marked", on);
  }

  function markRange(j, a, b) {
    for (let i = Math.min(a, b); i <= Math.max(a, b); i++) setMark(j, i, true);
  }

  // Marked tokens as [start, end) runs per response.
  function spans() {
    const out = [];
    marks.forEach((set, j) => {
      const idx = Array.from(set).sort((a, b) => a - b);
      let start = null, prev = null;
      for (const i of idx) {
        if (start === null) start = i;
        else if (i !== prev + 1) { out.push({response: j, start, end: prev + 1}); start = i; }
        prev = i;
      }
      if (start !== null) out.push({response: j, start, end: prev + 1});
    });
    return out;
  }

  async function post(url, payload) {
    busy = true;
    status.textContent = "Saving…";
    try {
      const res = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload)});
      const data = await res.json().catch(() => ({}));
      if (res.ok) { location.replace("/"); return; }
      status.textContent = `Not saved (${res.status}): ${data.error || res.statusText}`;
      if (res.status === 409) setTimeout(() => location.replace("/"), 1500);
    } catch (e) {
      status.textContent = `Not saved: ${e}`;
    }
    busy = false;
  }

  function doSubmit() {
    if (busy) return;
    if (choice === null) { status.textContent = `Choose a response first (1–${k})`; return; }
    post("/api/answer", {item_id: itemId, labeler, choice, spans: spans()});
  }

  function doSkip() {
    if (!busy) post("/api/skip", {item_id: itemId, labeler});
  }

  function clearMarks() {
    marks.forEach((set, j) => Array.from(set).forEach((i) => setMark(j, i, false)));
    anchor = null;
  }

  samples.forEach((s, j) => {
    const text = s.querySelector(".text");
    // Shift-click extends a range: keep the browser from extending a text selection.
    text.addEventListener("mousedown", (ev) => { if (ev.shiftKey) ev.preventDefault(); });
    text.addEventListener("mouseup", (ev) => {
      const sel = window.getSelection();
      const tok = ev.target.closest(".tok");
      if (ev.shiftKey && tok && anchor && anchor.j === j) {
        markRange(j, anchor.i, Number(tok.dataset.i));
      } else if (sel && !sel.isCollapsed) {
        // A drag: mark every token the selection touches.
        const hit = Array.from(s.querySelectorAll(".tok")).filter((t) => sel.containsNode(t, true));
        hit.forEach((t) => setMark(j, Number(t.dataset.i), true));
        sel.removeAllRanges();
        if (hit.length) anchor = {j, i: Number(hit[hit.length - 1].dataset.i)};
        return;
      } else if (tok) {
        const i = Number(tok.dataset.i);
        setMark(j, i, !marks[j].has(i));
      }
      if (tok) anchor = {j, i: Number(tok.dataset.i)};
    });
    s.querySelector(".choose").addEventListener("click", () => choose(j));
  });
  submit.addEventListener("click", doSubmit);
  document.getElementById("skip").addEventListener("click", doSkip);
  document.getElementById("clear").addEventListener("click", clearMarks);

  // The item is held for this labeller until a deadline fixed when it was shown;
  // only a renew moves it. Working on the item (a key, a click) renews the hold
  // once half of it has passed, so a labeller who is still at it keeps it.
  const leaseSeconds = Number(main.dataset.leaseSeconds);
  let renewAt = Date.now() + (Number(main.dataset.leaseLeft) - leaseSeconds / 2) * 1000;
  let renewing = false;

  async function renewIfDue() {
    if (renewing || busy || !(Date.now() >= renewAt)) return;
    renewing = true;
    try {
      const res = await fetch("/api/renew", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({item_id: itemId, labeler})});
      const data = await res.json().catch(() => ({}));
      if (res.ok) {
        renewAt = Date.now() + (data.lease_seconds_left - leaseSeconds / 2) * 1000;
      } else if (res.status === 409) {
        renewAt = Infinity;
        status.textContent = "This item is no longer held for you: another labeller may answer it first";
      }
    } catch (e) {
      // Offline for a moment: the next key or click tries again.
    }
    renewing = false;
  }
  document.addEventListener("keydown", renewIfDue);
  document.addEventListener("mouseup", renewIfDue);

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const n = Number(ev.key);
    if (Number.isInteger(n) && n >= 1 && n <= k) choose(n - 1);
    else if (ev.key === "Enter") doSubmit();
    else if (ev.key === "s" || ev.key === "S") doSkip();
    else if (ev.key === "c" || ev.key === "C") clearMarks();
    else return;
    ev.preventDefault();
  });
})();
