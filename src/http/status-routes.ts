import type { FastifyInstance } from 'fastify';

/** What GET /status reports: who this agent is, its peers, transfers, cache and recent errors. */
export interface AgentStatus {
  id?: string;
  zone?: string;
  version: string;
  uptimeSeconds: number;
  registry: string;
  p2p: { enabled: boolean; addresses: string[] };
  peers: { id: string; zone?: string; rttMs?: number }[];
  transfers: { digest: string; repository: string; bytes: number; size?: number; sources: string[]; seconds: number; pieces?: { have: number; total: number } }[];
  cache: { bytes: number; maxBytes: number; blobs: number };
  recentErrors: { time: string; message: string; digest?: string }[];
}

export function statusRoutes(app: FastifyInstance, status: () => Promise<AgentStatus>): void {
  app.get('/status', async () => status());
}
