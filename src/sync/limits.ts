/**
 * Per-member resource limits of team sync, in one place (docs/sync.md, "Threat model" lists them). A
 * member is trusted with the team's data, not with this workstation's memory, disk or CPU: everything
 * a teammate can make us hold, queue or decode is bounded here, and going beyond a bound is reported
 * naming the member (SYNC_LIMIT, or a dropped channel with a log line), never absorbed.
 *
 * The catalog limits can be lowered or raised per run with CLONEBOX_SYNC_MAX_CATALOG_ENTRIES and
 * CLONEBOX_SYNC_MAX_CATALOG_BYTES (a team sharing more than a few TiB of data needs larger ones).
 */

/** Block requests a peer may have queued with us at once (an honest fetch keeps about 16 in flight). */
export const MAX_QUEUED_REQUESTS = 256;

/**
 * Connections still proving membership (nothing of ours sent yet but the proof), per remote address
 * and in all. Several teammates behind one NAT (or on one machine) share an address, so the per-address
 * bound leaves room for a few honest ones proving at once; each proof takes milliseconds, at most 10 s.
 */
export const MAX_UNPROVEN_PER_ADDRESS = 8;
export const MAX_UNPROVEN = 32;

/** Members recorded per team: a new key beyond it is refused (a team is a handful of workstations). */
export const MAX_MEMBERS = 256;

/** Members first learnt from one peer's cards per sync (the rest wait for the next sync). */
export const MAX_NEW_CARDS_PER_PEER = 16;

/** Entries of one teammate's catalog (about 45 bytes of map per 64 KiB of shared data). */
const DEFAULT_MAX_CATALOG_ENTRIES = 1_000_000;
/** Bytes of one teammate's catalog: 1 GiB describes about 1.4 PiB of shared chains. */
const DEFAULT_MAX_CATALOG_BYTES = 1024 * 1024 * 1024;

function envLimit(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  return Number.isSafeInteger(n) && n > 0 ? n : dflt;
}

function catalogLimits(): { entries: number; bytes: number } {
  return {
    entries: envLimit('CLONEBOX_SYNC_MAX_CATALOG_ENTRIES', DEFAULT_MAX_CATALOG_ENTRIES),
    bytes: envLimit('CLONEBOX_SYNC_MAX_CATALOG_BYTES', DEFAULT_MAX_CATALOG_BYTES),
  };
}

/** Why a teammate's catalog of this size is not replicated further (null: within the limits). */
export function catalogOverLimit(length: number, byteLength: number): string | null {
  const lim = catalogLimits();
  if (length > lim.entries) return `${length} entries, more than the limit of ${lim.entries}`;
  if (byteLength > lim.bytes) return `${byteLength} bytes, more than the limit of ${lim.bytes}`;
  return null;
}

/**
 * Sockets accepted on the TCP listener (tcp.ts) whose Noise handshake is not done yet, in all. Only a
 * teammate just offered the port connects, once per connection; anything beyond is closed at once.
 */
export const MAX_TCP_UNAUTHENTICATED = 16;

/**
 * Largest message on the TCP path (framed-socket.ts): secret-stream's own limit (its 3-byte length
 * prefix), and before the Noise handshake is done a small one: the handshake's messages and the
 * stream header are a few hundred bytes, so a stranger cannot make us allocate 16 MiB per socket.
 */
export const MAX_TCP_MESSAGE = 256 * 256 * 256 - 1;
export const MAX_TCP_HANDSHAKE_MESSAGE = 64 * 1024;
