/**
 * Team invites: the team secret (and the team's private bootstrap nodes, if any) as one line of text
 * that survives chat and e-mail. Versioned and checksummed, so a truncated or mistyped invite is
 * refused at `team join` instead of producing a team that silently never meets anyone.
 *
 * Text: "cbi-" followed by the z-base-32 encoding of these bytes (docs/sync.md, "Invites"):
 *
 *   offset  size  field
 *   0       1     version: 1
 *   1       1     flags: bit 0 set = a bootstrap list follows; other bits 0
 *   2       32    team secret
 *   34      ...   if flags bit 0: count (1 byte, 1..16), then per node: host length (1 byte, 1..253),
 *                 host (ASCII), port (2 bytes, big-endian, 1..65535)
 *   end-4   4     checksum: the first 4 bytes of SHA-256("clonebox/v1/invite" || every byte before it)
 *
 * The checksum scheme is the same in every version, so a damaged invite is told apart from a newer one.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { CloneboxError, ioError } from '../errors.js';
import type { HostPort } from './hostport.js';
import { SECRET_BYTES } from './keys.js';
import { z32Decode, z32Encode } from './z32.js';

const INVITE_PREFIX = 'cbi-';
const INVITE_VERSION = 1;
const FLAG_BOOTSTRAP = 1;
const CHECKSUM_BYTES = 4;
const MAX_BOOTSTRAP = 16;
const HOST_RE = /^[A-Za-z0-9.:-]{1,253}$/;

export interface Invite {
  version: number;
  secret: Buffer;
  /** The team's private bootstrap nodes; empty: the public DHT. */
  bootstrap: HostPort[];
}

function checksum(body: Buffer): Buffer {
  return createHash('sha256').update('clonebox/v1/invite').update(body).digest().subarray(0, CHECKSUM_BYTES);
}

export function encodeInvite(secret: Buffer, bootstrap: HostPort[] = []): string {
  if (secret.length !== SECRET_BYTES) throw new Error('team secret must be 32 bytes');
  if (bootstrap.length > MAX_BOOTSTRAP) throw new CloneboxError('USAGE', `at most ${MAX_BOOTSTRAP} bootstrap nodes fit in an invite`);
  const parts: Buffer[] = [Buffer.from([INVITE_VERSION, bootstrap.length ? FLAG_BOOTSTRAP : 0]), secret];
  if (bootstrap.length) {
    parts.push(Buffer.from([bootstrap.length]));
    for (const { host, port } of bootstrap) {
      if (!HOST_RE.test(host)) throw new Error(`bootstrap host ${JSON.stringify(host)} cannot be put in an invite`);
      const port2 = Buffer.alloc(2);
      port2.writeUInt16BE(port);
      parts.push(Buffer.from([host.length]), Buffer.from(host, 'ascii'), port2);
    }
  }
  const body = Buffer.concat(parts);
  return INVITE_PREFIX + z32Encode(Buffer.concat([body, checksum(body)]));
}

function bad(message: string, hint = 'copy the whole invite again (`clonebox team invite <team>` prints it on the inviting workstation)'): CloneboxError {
  return new CloneboxError('BAD_INVITE', message, { hint });
}

/** Decodes and checks an invite; every failure is a BAD_INVITE usage error (exit 2) saying what is wrong. */
export function decodeInvite(text: string): Invite {
  const t = text.replace(/\s+/g, '');
  if (!t.toLowerCase().startsWith(INVITE_PREFIX)) throw bad(`not a clonebox invite (it starts with "${INVITE_PREFIX}")`);
  const minChars = Math.ceil(((2 + SECRET_BYTES + CHECKSUM_BYTES) * 8) / 5);
  if (t.length - INVITE_PREFIX.length < minChars) throw bad('invite is truncated');
  let bytes: Buffer;
  try {
    bytes = z32Decode(t.slice(INVITE_PREFIX.length));
  } catch (err) {
    throw bad(`invite is damaged (${(err as Error).message})`);
  }
  // One text per invite: extra characters that decode to no whole byte are refused too.
  if (z32Encode(bytes) !== t.slice(INVITE_PREFIX.length).toLowerCase()) throw bad('invite is damaged (extra characters at the end)');
  if (bytes.length < 2 + SECRET_BYTES + CHECKSUM_BYTES) throw bad('invite is truncated');
  const body = bytes.subarray(0, bytes.length - CHECKSUM_BYTES);
  if (!checksum(body).equals(bytes.subarray(bytes.length - CHECKSUM_BYTES))) throw bad('invite is damaged (checksum mismatch)');
  const version = body[0]!;
  if (version !== INVITE_VERSION) {
    throw bad(`invite version ${version} is not supported by this clonebox (it reads version ${INVITE_VERSION})`, 'upgrade clonebox on this workstation');
  }
  const flags = body[1]!;
  if (flags & ~FLAG_BOOTSTRAP) throw bad(`invite has unknown flags 0x${flags.toString(16)}`);
  const secret = Buffer.from(body.subarray(2, 2 + SECRET_BYTES));
  let pos = 2 + SECRET_BYTES;
  const bootstrap: HostPort[] = [];
  if (flags & FLAG_BOOTSTRAP) {
    const count = body[pos++];
    if (count === undefined || count < 1 || count > MAX_BOOTSTRAP) throw bad('invite has a malformed bootstrap list');
    for (let i = 0; i < count; i++) {
      const len = body[pos++];
      if (len === undefined || len < 1 || pos + len + 2 > body.length) throw bad('invite has a malformed bootstrap list');
      const host = body.subarray(pos, pos + len).toString('ascii');
      pos += len;
      const port = body.readUInt16BE(pos);
      pos += 2;
      if (!HOST_RE.test(host) || port === 0) throw bad('invite has a malformed bootstrap list');
      bootstrap.push({ host, port });
    }
  }
  if (pos !== body.length) throw bad('invite has trailing bytes');
  return { version, secret, bootstrap };
}

/** Most bytes read from an invite file or stream: an invite of 16 long host names is under 7 KiB. */
const MAX_INVITE_INPUT = 64 * 1024;

/**
 * The invite from a file or a stream (stdin): its first non-empty line, decoded later by decodeInvite.
 * Reading stops at MAX_INVITE_INPUT bytes (a wrong file given by mistake is not read whole).
 */
export async function readInvite(from: string | NodeJS.ReadableStream): Promise<string> {
  const label = typeof from === 'string' ? from : 'stdin';
  const stream = typeof from === 'string' ? createReadStream(from, { end: MAX_INVITE_INPUT - 1 }) : from;
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer | string>) {
      const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      chunks.push(b);
      size += b.length;
      // A complete non-empty first line is all that is needed (a paste ends with Enter, not Ctrl-D).
      if (size >= MAX_INVITE_INPUT || /\S[^\n]*\n/.test(Buffer.concat(chunks).toString('utf8'))) break;
    }
  } catch (err) {
    throw ioError(err, 'cannot read the invite', label);
  }
  const line = Buffer.concat(chunks)
    .subarray(0, MAX_INVITE_INPUT)
    .toString('utf8')
    .split(/\r?\n/)
    .find((l) => l.trim() !== '');
  if (line === undefined) throw bad(`no invite in ${label} (it is empty)`);
  return line.trim();
}
