// adloop review: one SKU at a time, every action on a key. The server saves each decision at once, so
// reloading (or restarting the server) resumes at the first SKU without a decision.
"use strict";
(function () {
  const LABEL_KEYS = "123456";
  const S = { labels: [], queue: localStorage.getItem("adloop-review-queue") || "review", items: [], pos: 0,
              focus: 0, drafts: {}, progress: null, busy: false };
  const $ = (id) => document.getElementById(id);

  // A token passed as /#token=... goes into a cookie (so <img> requests carry it) and out of the address bar.
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("adloop-review-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("adloop-review-token");
  if (token) document.cookie = "adloop_review_token=" + encodeURIComponent(token) + "; path=/; SameSite=Strict";

  async function api(path, body) {
    const opts = { headers: {} };
    if (token) opts.headers.Authorization = "Bearer " + token;
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    const data = await r.json().catch(() => ({ error: "bad_response", detail: "HTTP " + r.status }));
    if (!r.ok) throw new Error((data.error || "error") + ": " + (data.detail || r.status));
    return data;
  }

  function say(text, error) {
    $("message").textContent = text || "";
    $("message").className = error ? "error" : "";
  }

  function fmtPct(x) { return (100 * x).toFixed(1) + "%"; }

  function showProgress() {
    const p = S.progress[S.queue];
    const el = $("progress");
    el.textContent = p.reviewed + " of " + p.total + " reviewed";
    el.dataset.reviewed = p.reviewed;
    el.dataset.total = p.total;
    el.dataset.queue = S.queue;
    const a = S.progress.audit.precision;
    $("precision").textContent = a.judged
      ? "audit precision " + fmtPct(a.precision) + " (95% CI " + fmtPct(a.ci95[0]) + "\u2013" + fmtPct(a.ci95[1]) +
        ", " + a.judged + " judged)"
      : "audit precision: nothing judged yet";
    for (const q of ["review", "audit"]) $("tab-" + q).classList.toggle("on", q === S.queue);
  }

  function current() { return S.items[S.pos]; }
  function firstUnreviewed(from) {
    for (let k = 0; k < S.items.length; k++) {
      const i = (from + k) % S.items.length;
      if (!S.items[i].decision) return i;
    }
    return -1;
  }

  function labelsOf(item) {
    if (S.drafts[item.sku_id]) return S.drafts[item.sku_id];
    return item.decision ? item.decision.labels : {};
  }

  function render() {
    const item = current();
    $("sku").hidden = !item;
    if (!item) { say(S.queue === "audit" ? "The audit sample is empty." : "The review queue is empty."); return; }
    $("sku").dataset.sku = item.sku_id;
    $("product").src = item.product;
    $("sku-id").textContent = item.sku_id;
    $("caption").textContent = item.caption || "(no caption)";
    $("position").textContent = (S.queue === "audit" ? "audit SKU " : "queue SKU ") + (S.pos + 1) + " of " + S.items.length;
    const d = item.decision;
    $("state").textContent = d
      ? "reviewed: " + (d.accept ? "accepted " + d.accept : Object.values(d.labels).includes("Available")
        ? "accepted (labelled Available)" : "every candidate rejected") + " \u00b7 status " + item.status
      : "not reviewed yet \u00b7 status " + item.status;
    const labels = labelsOf(item);
    const box = $("candidates");
    box.replaceChildren();
    item.candidates.forEach((c, i) => {
      const el = document.createElement("div");
      el.className = "cand" + (i === S.focus ? " focus" : "") + (d && d.accept === c.id ? " accepted" : "");
      el.dataset.cand = c.id;
      const img = document.createElement("img");
      img.src = c.image;
      img.alt = item.sku_id + " " + c.id;
      const lab = labels[c.id];
      const rows = [
        ["", "attempt " + c.attempt + (item.auto === c.id ? "" : "")],
        ["p", "P(Available) " + (c.p_available == null ? "n/a" : c.p_available.toFixed(3))],
        ["defect", "predicted: " + (c.defect || "none")],
      ];
      if (item.auto === c.id) rows.push(["auto", "RFNet accepted this one"]);
      el.append(img);
      for (const [cls, text] of rows) {
        const div = document.createElement("div");
        div.className = cls;
        div.textContent = text;
        el.append(div);
      }
      const tag = document.createElement("div");
      tag.className = "label" + (lab ? (lab === "Available" ? " Available" : " defect") : "");
      tag.textContent = lab ? "label: " + lab : "no label";
      el.append(tag);
      el.addEventListener("click", () => { S.focus = i; render(); });
      box.append(el);
    });
  }

  async function load(queue) {
    S.queue = queue;
    localStorage.setItem("adloop-review-queue", queue);
    const data = await api("api/items?queue=" + encodeURIComponent(queue));
    S.items = data.items;
    const next = firstUnreviewed(0);
    S.pos = next < 0 ? Math.max(0, S.items.length - 1) : next;
    startFocus();
    showProgress();
    say(next < 0 && S.items.length ? "Every SKU here is reviewed; j / k to revisit." : "");
    render();
  }

  function startFocus() {
    const item = current();
    if (!item) { S.focus = 0; return; }
    // The audit starts on RFNet's pick (the one the precision is about); the queue on the most likely one.
    let best = 0;
    item.candidates.forEach((c, i) => {
      if (item.auto ? c.id === item.auto : (c.p_available || 0) > (item.candidates[best].p_available || 0)) best = i;
    });
    S.focus = best;
  }

  async function submit(body) {
    const item = current();
    if (S.busy || !item) return;
    S.busy = true;
    try {
      const res = await api("api/decisions", Object.assign({ sku_id: item.sku_id, queue: S.queue }, body));
      S.items[S.pos] = res.item;
      delete S.drafts[item.sku_id];
      S.progress = res.progress;
      showProgress();
      const next = firstUnreviewed(S.pos + 1);
      say("saved " + item.sku_id + (next < 0 ? " \u00b7 every SKU here is reviewed" : ""));
      if (next >= 0) { S.pos = next; startFocus(); }
    } catch (err) {
      say(err.message, true);
    } finally {
      S.busy = false;
      render();
    }
  }

  function label(k) {
    const item = current();
    if (!item || !item.candidates.length) return;
    const draft = Object.assign({}, labelsOf(item));
    draft[item.candidates[S.focus].id] = S.labels[k];
    S.drafts[item.sku_id] = draft;
    const missing = item.candidates.findIndex((c) => !(c.id in draft));
    if (missing < 0) { submit({ accept: null, labels: draft }); return; }
    S.focus = missing;
    render();
  }

  function accept() {
    const item = current();
    if (!item || !item.candidates.length) return;
    const id = item.candidates[S.focus].id;
    const labels = Object.assign({}, labelsOf(item));
    delete labels[id];
    submit({ accept: id, labels: labels });
  }

  function move(delta) {
    if (!S.items.length) return;
    S.pos = (S.pos + delta + S.items.length) % S.items.length;
    startFocus();
    say("");
    render();
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || !S.progress) return;
    const item = current();
    const n = item ? item.candidates.length : 0;
    const k = e.key;
    if (LABEL_KEYS.includes(k) && k !== "") label(LABEL_KEYS.indexOf(k));
    else if (k === "ArrowRight" || k === "l") { if (n) { S.focus = (S.focus + 1) % n; render(); } }
    else if (k === "ArrowLeft" || k === "h") { if (n) { S.focus = (S.focus - 1 + n) % n; render(); } }
    else if (k === "a" || k === "Enter") accept();
    else if (k === "j" || k === "ArrowDown") move(1);
    else if (k === "k" || k === "ArrowUp") move(-1);
    else if (k === "n") { const i = firstUnreviewed(S.pos + 1); if (i >= 0) { S.pos = i; startFocus(); render(); } }
    else if (k === "x") { if (item) { delete S.drafts[item.sku_id]; render(); } }
    else if (k === "q") load("review").catch((err) => say(err.message, true));
    else if (k === "u") load("audit").catch((err) => say(err.message, true));
    else return;
    e.preventDefault();
  });
  for (const q of ["review", "audit"]) $("tab-" + q).addEventListener("click", () => load(q));

  (async function start() {
    try {
      const st = await api("api/state");
      S.labels = st.labels;
      S.progress = st.progress;
      $("label-keys").innerHTML = st.labels.map((l, i) => "<kbd>" + (i + 1) + "</kbd> " + l).join(" &middot; ") +
        " &mdash; label the focused candidate";
      await load(st.queues.includes(S.queue) ? S.queue : "review");
    } catch (err) {
      say(err.message, true);
    }
  })();
})();
