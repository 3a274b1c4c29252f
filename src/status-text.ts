import type { AgentStatus } from './http/status-routes.js';
import { formatBytes } from './progress-bar.js';

/** The agent's status as an operator reads it on a terminal. */
export function formatStatus(s: AgentStatus): string {
  const lines: string[] = [];
  lines.push(`agent     ${s.id ?? '(p2p off)'}  zone ${s.zone ?? '-'}  version ${s.version}  up ${s.uptimeSeconds}s`);
  lines.push(`registry  ${s.registry}`);
  if (s.p2p.enabled) lines.push(`p2p       ${s.p2p.addresses.join(' ') || '(not listening)'}`);
  const used = s.cache.maxBytes > 0 ? Math.round((s.cache.bytes / s.cache.maxBytes) * 100) : 0;
  lines.push(`cache     ${s.cache.blobs} blobs, ${formatBytes(s.cache.bytes)} of ${formatBytes(s.cache.maxBytes)} (${used}%)`);
  lines.push(`peers     ${s.peers.length}`);
  for (const p of s.peers) lines.push(`  ${p.id}  zone ${p.zone ?? '?'}  rtt ${p.rttMs === undefined ? '?' : `${p.rttMs} ms`}`);
  lines.push(`transfers ${s.transfers.length}`);
  for (const t of s.transfers) {
    const done = t.pieces ? `${t.pieces.have}/${t.pieces.total} pieces` : `${formatBytes(t.bytes)}${t.size ? ` of ${formatBytes(t.size)}` : ''}`;
    lines.push(`  ${t.digest}  ${t.repository}  ${done}  from ${t.sources.join(', ') || '…'}  ${t.seconds}s`);
  }
  lines.push(`errors    ${s.recentErrors.length}`);
  for (const e of s.recentErrors.slice(0, 10)) lines.push(`  ${e.time}  ${e.digest ? `${e.digest}  ` : ''}${e.message}`);
  return `${lines.join('\n')}\n`;
}
