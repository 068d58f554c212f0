"""The HTML status page: one self-contained document, inline CSS and JavaScript only.

The server embeds the first ``/status`` document (``status.status_page``); the script
renders it at once, then fetches ``/status`` every second and updates the DOM in place
(no reload). Every value goes in with ``textContent``: peer names and error texts are
never parsed as HTML. Each peer row carries ``data-upstream`` and ``data-peer`` and its
state cell ``class="state"`` with the state as text, for tests and scrapers. Below 720
pixels the tables become one card per peer.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gateway status</title>
<style>
:root { --bg:#f6f7f9; --fg:#1d2330; --muted:#667085; --card:#fff; --line:#e3e6eb;
  --up:#1a7f37; --down:#8a94a6; --failed:#cf222e; --unhealthy:#bc4c00; --draining:#8250df; }
@media (prefers-color-scheme: dark) {
  :root { --bg:#0f1217; --fg:#e6e9ef; --muted:#9aa4b2; --card:#181c23; --line:#2a303a; }
}
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  background:var(--bg); color:var(--fg); }
header { display:flex; flex-wrap:wrap; align-items:baseline; gap:.4rem 1.4rem;
  padding:.9rem 1.2rem; background:var(--card); border-bottom:1px solid var(--line);
  position:sticky; top:0; z-index:1; }
header h1 { font-size:1.15rem; margin:0; }
.facts { display:flex; flex-wrap:wrap; gap:.3rem 1.1rem; color:var(--muted); }
.facts b { color:var(--fg); font-weight:600; font-variant-numeric:tabular-nums; }
#live { margin-left:auto; color:var(--muted); white-space:nowrap; }
#live::before { content:""; display:inline-block; width:.6rem; height:.6rem;
  border-radius:50%; background:var(--up); margin-right:.35rem; }
#live.stale::before { background:var(--failed); }
main { padding:1rem 1.2rem 2rem; max-width:1400px; margin:0 auto; }
section.upstream { background:var(--card); border:1px solid var(--line);
  border-radius:8px; margin-bottom:1rem; overflow:hidden; }
section.upstream h2 { font-size:1rem; margin:0; padding:.7rem 1rem;
  border-bottom:1px solid var(--line); display:flex; flex-wrap:wrap; gap:.3rem .9rem; }
section.upstream h2 .meta { color:var(--muted); font-weight:400; }
table { width:100%; border-collapse:collapse; }
th, td { text-align:left; padding:.45rem 1rem; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { white-space:nowrap; font-size:.78rem; text-transform:uppercase; letter-spacing:.03em; color:var(--muted);
  font-weight:600; }
tr:last-child td { border-bottom:0; }
td.num { font-variant-numeric:tabular-nums; }
.peer { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; word-break:break-all; }
.tag { white-space:nowrap; font-size:.72rem; color:var(--muted); border:1px solid var(--line);
  border-radius:4px; padding:0 .3rem; margin-left:.4rem; }
.state { font-weight:600; white-space:nowrap; }
.dot { display:inline-block; width:.55rem; height:.55rem; border-radius:50%;
  background:currentColor; margin-right:.35rem; vertical-align:.05rem; }
.state-up { color:var(--up); } .state-down { color:var(--down); }
.state-failed { color:var(--failed); } .state-unhealthy { color:var(--unhealthy); }
.state-draining { color:var(--draining); }
.err { color:var(--failed); max-width:28rem; word-break:break-word; }
.muted { color:var(--muted); }
@media (max-width: 720px) {
  header { padding:.7rem .8rem; } main { padding:.7rem .6rem 1.5rem; }
  #live { margin-left:0; }
  thead { display:none; }
  table, tbody, tr, td { display:block; width:100%; }
  tr { border-bottom:1px solid var(--line); padding:.4rem 0; }
  tr:last-child { border-bottom:0; }
  td { border:0; padding:.2rem .9rem; display:flex; gap:.8rem; }
  td::before { content:attr(data-label); flex:0 0 6.5rem; color:var(--muted); font-weight:400;
    font-size:.78rem; text-transform:uppercase; letter-spacing:.03em; }
  td.empty { display:none; }
  .err { max-width:none; }
}
</style>
</head>
<body>
<header>
  <h1>gateway</h1>
  <div class="facts">
    <span>version <b id="version"></b></span>
    <span>pid <b id="pid"></b></span>
    <span id="workers-fact" hidden>workers <b id="workers"></b></span>
    <span>up <b id="uptime"></b></span>
    <span>connections <b id="connections"></b></span>
    <span>tunnels <b id="tunnels"></b></span>
    <span>requests <b id="requests"></b></span>
  </div>
  <span id="live">live</span>
</header>
<main id="upstreams"></main>
<script>
"use strict";
const INITIAL = /*INITIAL*/null;
const COLUMNS = ["Server", "State", "Weight", "Active", "Requests", "Failures",
                 "Health check", "Last error"];

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
        m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}
function ms(seconds) {
  return seconds === null || seconds === undefined ? "" :
    (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
}
function cell(row, label, text, cls) {
  const td = el("td", {"data-label": label}, text);
  if (cls) td.className = cls;
  if (text === "") td.classList.add("empty");
  row.appendChild(td);
  return td;
}
function peerRow(group, p, now) {
  const row = el("tr", {"data-upstream": group.name, "data-peer": p.name});
  const name = cell(row, "Server", p.name, "peer");
  if (p.backup) name.appendChild(el("span", {"class": "tag"}, "backup"));
  const state = el("td", {"data-label": "State", "class": "state state-" + p.state});
  const value = el("span");
  value.append(el("span", {"class": "dot"}), p.state);
  row.appendChild(state).appendChild(value);
  const weight = p.effective_weight === p.weight ? String(p.weight)
    : p.weight + " (now " + (+p.effective_weight.toFixed(2)) + ")";
  cell(row, "Weight", weight, "num weight");
  cell(row, "Active", p.max_conns ? p.active + " / " + p.max_conns : p.active, "num active");
  cell(row, "Requests", p.requests, "num requests");
  cell(row, "Failures", p.fails ? p.failures + " (" + p.fails + " recent)" : p.failures,
       "num failures");
  const hc = p.health_check;
  cell(row, "Health check", hc === null ? "" :
       (hc.passed ? "passed" : "failed" + (hc.reason ? ": " + hc.reason : "")) +
       (hc.latency !== null ? ", " + ms(hc.latency) : ""),
       "health" + (hc && !hc.passed ? " err" : ""));
  const e = p.last_error;
  cell(row, "Last error", e ? e.text + " (" + duration(now - e.time) + " ago)" : "",
       "err last-error");
  return row;
}
function groupSection(group, now) {
  const section = el("section", {"class": "upstream", "data-upstream": group.name});
  const h2 = el("h2", {}, group.name);
  let meta = group.balance;
  if (group.queue) meta += " \u00b7 queue " + group.queue.size + "/" + group.queue.max_size;
  h2.appendChild(el("span", {"class": "meta"}, meta));
  section.appendChild(h2);
  const table = el("table");
  const head = el("tr");
  for (const c of COLUMNS) head.appendChild(el("th", {}, c));
  table.appendChild(el("thead")).appendChild(head);
  const body = el("tbody");
  for (const p of group.peers) body.appendChild(peerRow(group, p, now));
  table.appendChild(body);
  section.appendChild(table);
  return section;
}
function render(doc) {
  const g = doc.gateway;
  for (const key of ["version", "pid", "connections", "tunnels", "requests"])
    document.getElementById(key).textContent = g[key];
  document.getElementById("uptime").textContent = duration(g.uptime);
  if (g.workers) {   // workers > 1: the master's document lists its worker processes
    const running = g.workers.filter(w => w.state === "running" && w.answered);
    const fact = document.getElementById("workers-fact");
    fact.hidden = false;
    fact.title = g.workers.map(w => "worker " + w.slot + ": " + (w.pid || "-") + " " +
                                    w.state).join("\n");
    document.getElementById("workers").textContent = running.length + " / " + g.workers.length;
  }
  const main = document.getElementById("upstreams");
  const sections = Object.values(doc.upstreams).map(group => groupSection(group, g.now));
  if (!sections.length) sections.push(el("p", {"class": "muted"}, "No upstream groups."));
  main.replaceChildren(...sections);
  document.body.dataset.updated = String(g.now);
}
function live(ok) {
  const node = document.getElementById("live");
  node.className = ok ? "" : "stale";
  node.textContent = ok ? "live \u00b7 " + new Date().toLocaleTimeString()
                        : "no answer from the gateway";
}
async function refresh() {
  try {
    // relative: the page also works behind a proxy that serves it under a prefix
    const response = await fetch("status", {cache: "no-store"});
    if (!response.ok) throw new Error(response.status);
    render(await response.json());
    live(true);
  } catch (e) {
    live(false);
  } finally {
    setTimeout(refresh, 1000);
  }
}
if (INITIAL) { render(INITIAL); live(true); }
setTimeout(refresh, 1000);
</script>
</body>
</html>
"""
