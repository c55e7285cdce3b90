/** HOST:PORT addresses of DHT bootstrap nodes (`--bootstrap`, the team setting, invites). */
import { CloneboxError } from '../errors.js';

export interface HostPort {
  host: string;
  port: number;
}

const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** Parses "HOST:PORT" (an IPv4 address or a host name; "localhost" is kept as 127.0.0.1). Usage error otherwise. */
export function parseHostPort(text: string, what = '--bootstrap'): HostPort {
  const m = /^\s*([^\s:]+):(\d{1,5})\s*$/.exec(text);
  const host = m?.[1] === 'localhost' ? '127.0.0.1' : m?.[1];
  const port = Number(m?.[2]);
  if (!m || !host || !HOST_RE.test(host) || !(port >= 1 && port <= 65535) || host.length > 253) {
    throw new CloneboxError('USAGE', `invalid ${what} address ${JSON.stringify(text)}`, {
      hint: 'use HOST:PORT with an IPv4 address or host name, e.g. 127.0.0.1:49737',
    });
  }
  return { host, port };
}

export function formatHostPort(hp: HostPort): string {
  return `${hp.host}:${hp.port}`;
}

export function isLoopbackHost(host: string): boolean {
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) || host === 'localhost';
}

function ipv4(host: string): number[] | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (!m) return null;
  const b = m.slice(1).map(Number);
  return b.every((x) => x <= 255) ? b : null;
}

/**
 * True for an IPv4 address of a private network (RFC 1918: 10/8, 172.16/12, 192.168/16) or a
 * link-local one (169.254/16): a LAN, where teammates reach each other without NAT. Host names and
 * carrier-grade NAT space (100.64/10) are not.
 */
export function isPrivateHost(host: string): boolean {
  const b = ipv4(host);
  if (!b) return false;
  const [a, c] = [b[0]!, b[1]!];
  return a === 10 || (a === 172 && c >= 16 && c <= 31) || (a === 192 && c === 168) || (a === 169 && c === 254);
}
