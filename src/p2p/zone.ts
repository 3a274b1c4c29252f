/*
 * A peer's zone travels in identify's agent version ("shoal/0.1.0 zone=eu-west-1a"): identify
 * runs on every new connection anyway, so the zone is known without another protocol or round
 * trip. The label is URI-encoded so any string survives the space-separated format.
 */
const VERSION = '0.1.0';

export function agentVersion(zone: string): string {
  return `shoal/${VERSION} zone=${encodeURIComponent(zone)}`;
}

/** The zone in a Shoal agent version, or undefined for anything else. */
export function zoneFromAgentVersion(agentVersion: string | undefined): string | undefined {
  if (agentVersion === undefined || !agentVersion.startsWith('shoal/')) return undefined;
  const m = /(?:^|\s)zone=(\S*)/.exec(agentVersion);
  if (m === null) return undefined;
  try {
    return decodeURIComponent(m[1]!);
  } catch {
    return undefined;
  }
}
