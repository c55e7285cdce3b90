/**
 * TCP sockets for the Noise streams of the TCP path (tcp.ts) that hand @hyperswarm/secret-stream whole
 * messages. Its wire framing: each message is a 3-byte little-endian length, then that many bytes
 * (`_onrawdata` in secret-stream). Given a plain net.Socket, secret-stream gets 64 KiB reads, each in
 * memory of its own, and reassembles every message larger than that into a fresh buffer (one copy of
 * every block frame, plus an allocation per read). Here the socket reads with net.Socket's `onread`
 * into memory chosen per read, and pushes each complete message (prefix included) as one chunk:
 * secret-stream then decrypts it where it lies (its fast path for a message within one chunk).
 *
 * - Small messages: read into a slab of SLAB bytes, filled front to back and each message pushed as a
 *   view of it. A slab is never refilled: the receiver keeps blocks as views of the message they came
 *   in (blocks.ts decodes raw frames in place, the pull holds blocks for its writer), so memory once
 *   pushed must stay as it is. Once less than MIN_READ of it is left, a new slab takes over, with the few
 *   bytes of a message begun at the end of the old one copied over.
 * - A message that does not fit in what is left of the slab and is larger than half a slab (block
 *   frames): a buffer of exactly its size, what arrived of it copied in, and the rest read straight
 *   into it.
 *
 * The length is checked against `maxMessage()` before anything is allocated for the message (a peer
 * that has not finished the Noise handshake is allowed small messages only, see tcp.ts); a message
 * over it destroys the socket with SYNC_LIMIT. The wire format and the Noise handshake are those of a
 * plain socket: only where the bytes land changes.
 */
import net from 'node:net';
import { CloneboxError } from '../errors.js';

const PREFIX = 3;
/** Bytes of one slab (small messages are views of it). */
const SLAB = 256 * 1024;
/** Less room than this part of a slab left: the next read goes to a new one. */
const MIN_READ = 1 / 16;

/** The parser: where the next read goes, and the complete messages each read completes. */
export class MessageReader {
  private slab: Buffer;
  /** First byte of the slab not pushed yet, and first byte not read yet. */
  private start = 0;
  private end = 0;
  /** A message larger than half a slab, being read straight into its own buffer. */
  private big: Buffer | null = null;
  private filled = 0;

  constructor(
    private readonly maxMessage: () => number,
    private readonly slabSize = SLAB,
  ) {
    this.slab = Buffer.allocUnsafeSlow(slabSize);
  }

  /** Memory for the next read (never empty). */
  next(): Buffer {
    return this.big ? this.big.subarray(this.filled) : this.slab.subarray(this.end);
  }

  /**
   * `n` bytes were read into next(): the messages they complete, in order, each with its prefix.
   * Throws SYNC_LIMIT on a length over maxMessage() (the stream is then unusable).
   */
  read(n: number): Buffer[] {
    const out: Buffer[] = [];
    if (this.big) {
      this.filled += n;
      if (this.filled === this.big.length) {
        out.push(this.big);
        this.big = null;
        this.filled = 0;
        if (this.slab.length - this.end < this.slabSize * MIN_READ) this.moveOn(0);
      }
      return out;
    }
    this.end += n;
    const s = this.slab;
    while (this.end - this.start >= PREFIX) {
      const len = s[this.start]! | (s[this.start + 1]! << 8) | (s[this.start + 2]! << 16);
      const max = this.maxMessage();
      if (len > max) throw CloneboxError.SYNC_LIMIT(`a TCP peer sent a message of ${len} bytes (at most ${max} here)`);
      const total = PREFIX + len;
      if (this.end - this.start < total) {
        if (this.start + total > s.length) this.moveOn(total);
        return out;
      }
      out.push(s.subarray(this.start, this.start + total));
      this.start += total;
    }
    if (s.length - this.end < this.slabSize * MIN_READ) this.moveOn(0);
    return out;
  }

  /** What is left of the slab cannot take the message begun at `start` (`total` bytes, 0: unknown yet). */
  private moveOn(total: number): void {
    const begun = this.slab.subarray(this.start, this.end);
    if (total > this.slabSize / 2) {
      // Read on into the slab after it (never over what was pushed) once this message is complete.
      this.big = Buffer.allocUnsafeSlow(total);
      this.filled = begun.copy(this.big);
      this.start = this.end;
      return;
    }
    const slab = Buffer.allocUnsafeSlow(this.slabSize);
    this.end = begun.copy(slab);
    this.start = 0;
    this.slab = slab;
  }
}

/**
 * A socket whose 'data' chunks are whole secret-stream messages. `accepted`: a socket a net.Server
 * made with `pauseOnConnect` (nothing read yet): its connection moves to a new socket that reads this
 * way (a server cannot pass `onread` to the sockets it makes); the returned socket is then the one
 * to use. `maxMessage` is asked at each message's length.
 */
export function framedSocket(from: { connect: net.NetConnectOpts } | { accepted: net.Socket }, maxMessage: () => number): net.Socket {
  const reader = new MessageReader(maxMessage);
  let sock: net.Socket;
  const onread = {
    buffer: () => reader.next(),
    callback: (n: number) => {
      let more = true;
      try {
        for (const m of reader.read(n)) more = sock.push(m);
      } catch (err) {
        sock.destroy(err as Error);
        return false;
      }
      return more;
    },
  };
  if ('connect' in from) {
    sock = net.connect({ ...from.connect, onread } as net.NetConnectOpts);
    return sock;
  }
  const old = from.accepted as net.Socket & { _handle?: object | null };
  const handle = old._handle;
  if (!handle || typeof handle !== 'object') {
    // Not the Node internals expected: the plain socket, reassembled by secret-stream as before.
    old.resume();
    return old;
  }
  old._handle = null;
  old.destroy(); // releases the server's count of it; the connection lives on in the new socket
  sock = new net.Socket({ handle, readable: true, writable: true, onread } as net.SocketConstructorOpts);
  return sock;
}
