/**
 * The status page at `/`: one self-contained HTML document that reads /status every few seconds
 * and renders it. No framework and no external assets: it must work on an air-gapped node.
 */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Shoal agent</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2733; background: #f7f9fb; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 24px 0 8px; }
  .meta { color: #56657a; }
  .cards { display: flex; gap: 12px; flex-wrap: wrap; }
  .card { background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: 10px 14px; min-width: 150px; }
  .card b { display: block; font-size: 18px; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #e6ebf0; font-family: ui-monospace, monospace; font-size: 12px; overflow-wrap: anywhere; }
  th { font-family: system-ui, sans-serif; color: #56657a; font-weight: 600; }
  .bar { height: 8px; background: #e6ebf0; border-radius: 4px; overflow: hidden; min-width: 120px; }
  .bar span { display: block; height: 100%; background: #2f7de1; }
  .empty { color: #8592a3; font-style: italic; }
  .error { color: #b42318; }
</style>
</head>
<body>
<h1>Shoal agent <span id="id" class="meta"></span></h1>
<div class="meta" id="meta">loading…</div>
<div class="cards">
  <div class="card">Peers<b id="peer-count">–</b></div>
  <div class="card">Transfers<b id="transfer-count">–</b></div>
  <div class="card">Cache<b id="cache">–</b><div class="bar"><span id="cache-bar" style="width:0"></span></div></div>
</div>
<h2>Peers</h2>
<table><thead><tr><th>peer</th><th>zone</th><th>round trip</th></tr></thead><tbody id="peers"></tbody></table>
<h2>Transfers</h2>
<table><thead><tr><th>blob</th><th>repository</th><th>progress</th><th>sources</th><th>time</th></tr></thead><tbody id="transfers"></tbody></table>
<h2>Recent errors</h2>
<table><thead><tr><th>time</th><th>blob</th><th>message</th></tr></thead><tbody id="errors"></tbody></table>
<script>
const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
function bytes(n) { let u = 0; while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; } return n.toFixed(u ? 1 : 0) + ' ' + units[u]; }
function cell(text, cls) { const td = document.createElement('td'); td.textContent = text; if (cls) td.className = cls; return td; }
function rows(id, items, render, empty) {
  const body = document.getElementById(id);
  body.replaceChildren();
  if (items.length === 0) { const tr = document.createElement('tr'); const td = cell(empty, 'empty'); td.colSpan = 5; tr.append(td); body.append(tr); return; }
  for (const item of items) { const tr = document.createElement('tr'); tr.append(...render(item)); body.append(tr); }
}
function progress(t) {
  const total = t.pieces ? t.pieces.total : t.size;
  const done = t.pieces ? t.pieces.have : t.bytes;
  const pct = total ? Math.round((done / total) * 100) : 0;
  const td = document.createElement('td');
  const bar = document.createElement('div'); bar.className = 'bar';
  const fill = document.createElement('span'); fill.style.width = pct + '%'; bar.append(fill);
  td.append(bar, document.createTextNode(t.pieces ? done + '/' + total + ' pieces' : bytes(done) + (total ? ' of ' + bytes(total) : '')));
  return td;
}
async function refresh() {
  try {
    const s = await (await fetch('/status')).json();
    document.getElementById('id').textContent = s.id || '(p2p off)';
    document.getElementById('meta').textContent = 'zone ' + (s.zone || '–') + ' · version ' + s.version + ' · up ' + s.uptimeSeconds + ' s · registry ' + s.registry;
    document.getElementById('peer-count').textContent = s.peers.length;
    document.getElementById('transfer-count').textContent = s.transfers.length;
    document.getElementById('cache').textContent = bytes(s.cache.bytes) + ' / ' + bytes(s.cache.maxBytes);
    document.getElementById('cache-bar').style.width = Math.min(100, (s.cache.bytes / s.cache.maxBytes) * 100) + '%';
    rows('peers', s.peers, (p) => [cell(p.id), cell(p.zone || '?'), cell(p.rttMs === undefined ? '?' : p.rttMs + ' ms')], 'no peers');
    rows('transfers', s.transfers, (t) => [cell(t.digest.slice(0, 19) + '…'), cell(t.repository), progress(t), cell(t.sources.join(', ')), cell(t.seconds + ' s')], 'no transfers');
    rows('errors', s.recentErrors, (e) => [cell(e.time), cell(e.digest ? e.digest.slice(0, 19) + '…' : ''), cell(e.message, 'error')], 'no errors');
  } catch (err) {
    document.getElementById('meta').textContent = 'cannot read /status: ' + err;
  }
}
refresh();
setInterval(refresh, 3000);
</script>
</body>
</html>
`;
