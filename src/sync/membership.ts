/**
 * The membership proof: the first thing on every connection, before any catalog entry or block.
 *
 * DHT nodes see the team's topic, so finding a peer on the topic proves nothing. Right after the Noise
 * handshake, each side sends (as the handshake of the "clonebox/membership" Protomux channel)
 *
 *   proof = HMAC-SHA256(membership key, "clonebox/v1/membership-proof" || len(h) || h || sender || receiver)
 *
 * where h is the Noise handshake hash of this connection (the same on both ends, unique to it) and sender,
 * receiver are the two Noise static public keys (32 bytes each) in the sender's view. Only a holder of
 * the team secret can compute it; it cannot be replayed on another connection (other h) nor reflected
 * back (sender and receiver swap). Each side checks the other's proof in constant time and only then
 * sends its Intro (workstation name, catalog key). A peer that sends a wrong proof, nothing within the
 * timeout, malformed frames, or more than a few KiB before proving is dropped.
 */
import { createHmac } from 'node:crypto';
import type NoiseSecretStream from '@hyperswarm/secret-stream';
import Protomux from 'protomux';
import { equalBytes } from './keys.js';
import { type Intro, intro as introEncoding, MEMBERSHIP_PROTOCOL, type MembershipHandshake, membershipHandshake, PROTOCOL_VERSION } from './messages.js';

const PROOF_CONTEXT = 'clonebox/v1/membership-proof';
/** Bytes a peer may send before it has proven membership (the proof itself takes about a hundred). */
const MAX_BYTES_BEFORE_PROOF = 16 * 1024;
const DEFAULT_PROOF_TIMEOUT_MS = 10_000;

export function membershipProof(key: Buffer, handshakeHash: Buffer, sender: Buffer, receiver: Buffer): Buffer {
  return createHmac('sha256', key)
    .update(PROOF_CONTEXT, 'utf8')
    .update(Buffer.from([handshakeHash.length]))
    .update(handshakeHash)
    .update(sender)
    .update(receiver)
    .digest();
}

export type RejectReason =
  /** The peer's proof did not check: it does not hold the team secret (or attacks). */
  | 'bad-proof'
  /** Nothing (or not all of it) arrived in time. */
  | 'timeout'
  /** Malformed frames, or too much data before proving. */
  | 'protocol'
  /** The connection closed first (the peer left, refused our proof, or was a duplicate connection). */
  | 'closed';

export class MembershipError extends Error {
  readonly reason: RejectReason;
  constructor(reason: RejectReason, message: string) {
    super(message);
    this.name = 'MembershipError';
    this.reason = reason;
  }
}

export interface ProvenPeer {
  publicKey: Buffer;
  /** The peer's Intro: claimed workstation name and catalog key. */
  intro: Intro;
  /** Protocol version of this session: the lower of both sides'. */
  version: number;
  mux: Protomux;
  /** The membership channel, left open for the life of the connection. */
  channel: Protomux.Channel;
}

export interface ProveOptions {
  /** The team's membership key (src/sync/keys.ts). */
  key: Buffer;
  /** What we tell a peer once it has proven itself. */
  intro: Intro;
  timeoutMs?: number;
  /**
   * Called synchronously once the peer's proof has checked, before our Intro is sent. Protomux refuses
   * a channel the remote opens before we created or paired it, and a proven peer may open its
   * channels as soon as it reads our Intro: this is where those protocols get paired (swarm.ts).
   */
  onVerified?: (mux: Protomux) => void;
}

/**
 * Runs the membership exchange on a fresh connection. Resolves once the peer has proven membership and
 * introduced itself; rejects with a MembershipError otherwise, after destroying the connection.
 */
export async function proveMembership(stream: NoiseSecretStream, opts: ProveOptions): Promise<ProvenPeer> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_PROOF_TIMEOUT_MS;
  let streamError: Error | null = null;
  stream.on('error', (err: Error) => {
    streamError = err;
  });
  const started = Date.now();
  const opened = await Promise.race([stream.opened, new Promise<'timeout'>((r) => setTimeout(r, timeoutMs, 'timeout').unref())]);
  if (opened === 'timeout') {
    stream.destroy(new Error('membership proof timed out'));
    throw new MembershipError('timeout', 'the encrypted connection did not open in time');
  }
  if (!opened || !stream.handshakeHash || !stream.publicKey || !stream.remotePublicKey) {
    throw new MembershipError('closed', `the connection closed before the handshake${streamError ? ` (${(streamError as Error).message})` : ''}`);
  }
  const handshakeHash = stream.handshakeHash;
  const local = stream.publicKey;
  const remote = stream.remotePublicKey;
  const mux = Protomux.from(stream);

  return new Promise<ProvenPeer>((resolve, reject) => {
    let settled = false;
    let proven = false;
    let version = 0;
    let received = 0;

    const cleanup = () => {
      clearTimeout(timer);
      stream.removeListener('data', ondata);
      stream.removeListener('close', onclose);
    };
    const fail = (reason: RejectReason, message: string) => {
      if (settled) return;
      settled = true;
      cleanup();
      stream.destroy(new Error(`membership: ${message}`));
      reject(new MembershipError(reason, message));
    };
    const ondata = (chunk: Buffer) => {
      received += chunk.length;
      if (!proven && received > MAX_BYTES_BEFORE_PROOF) fail('protocol', `peer sent more than ${MAX_BYTES_BEFORE_PROOF} bytes before proving membership`);
    };
    const onclose = () => {
      const e = streamError as Error | null;
      if (e && !/duplicate connection/i.test(e.message) && !/connection reset|timed out|ETIMEDOUT|ECONNRESET/i.test(e.message)) {
        fail('protocol', `connection failed before membership was proven (${e.message})`);
      } else {
        fail(
          'closed',
          proven
            ? 'the peer closed the connection before introducing itself (it may not accept our proof: another secret for this topic?)'
            : `the connection closed before the peer proved membership${e ? ` (${e.message})` : ''}`,
        );
      }
    };
    const timer = setTimeout(
      () => {
        fail('timeout', proven ? `the peer did not introduce itself within ${timeoutMs} ms` : `no membership proof within ${timeoutMs} ms`);
      },
      Math.max(1, timeoutMs - (Date.now() - started)),
    );
    stream.on('data', ondata);
    stream.on('close', onclose);

    const channel = mux.createChannel<MembershipHandshake>({
      protocol: MEMBERSHIP_PROTOCOL,
      handshake: membershipHandshake,
      messages: [
        {
          encoding: introEncoding,
          onmessage: (msg: Intro) => {
            if (settled) return;
            if (!proven) return fail('protocol', 'peer introduced itself before its proof was checked');
            settled = true;
            cleanup();
            resolve({ publicKey: remote, intro: msg, version, mux, channel: channel! });
          },
        },
      ],
      onopen: (hs: MembershipHandshake) => {
        if (settled) return;
        const expected = membershipProof(opts.key, handshakeHash, remote, local);
        if (!equalBytes(hs.proof, expected)) return fail('bad-proof', 'the peer does not hold the team secret (membership proof did not check)');
        proven = true;
        version = Math.min(hs.version, PROTOCOL_VERSION);
        try {
          opts.onVerified?.(mux);
          channel!.messages[0]!.send(opts.intro);
        } catch (err) {
          fail('protocol', `cannot introduce ourselves (${(err as Error).message})`);
        }
      },
      onclose: () => {
        if (!settled) onclose();
      },
    });
    if (!channel) return fail('protocol', 'a membership channel is already open on this connection');
    channel.open({ version: PROTOCOL_VERSION, proof: membershipProof(opts.key, handshakeHash, local, remote) });
  });
}
