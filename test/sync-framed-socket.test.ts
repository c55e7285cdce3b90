/**
 * Sockets that hand secret-stream whole messages (src/sync/framed-socket.ts): the parser fed every
 * split of a stream of messages (small, many per read, larger than its slab), messages pushed earlier
 * never overwritten by later reads, a hostile length refused before anything is allocated for it; and
 * real TCP sockets on 127.0.0.1 (accepted and dialled): whole messages out, end, close and errors
 * passed on, reading stopped while the consumer does not take more.
 */
import { once } from 'node:events';
import net from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { framedSocket, MessageReader } from '../src/sync/framed-socket.js';
import { rng } from './helpers/random.js';

const r = rng(7);

/** A message as on the wire: 3-byte little-endian length, then the bytes. */
function wire(body: Buffer): Buffer {
  const out = Buffer.alloc(3 + body.length);
  out.writeUIntLE(body.length, 0, 3);
  body.copy(out, 3);
  return out;
}

/** Feeds `bytes` to the reader in reads of at most the sizes `cuts` gives (and what next() offers). */
function feed(reader: MessageReader, bytes: Buffer, cut: (at: number) => number): Buffer[] {
  const got: Buffer[] = [];
  let at = 0;
  while (at < bytes.length) {
    const into = reader.next();
    expect(into.length).toBeGreaterThan(0);
    const n = Math.min(into.length, cut(at), bytes.length - at);
    bytes.copy(into, 0, at, at + n);
    at += n;
    got.push(...reader.read(n));
  }
  return got;
}

describe('MessageReader', () => {
  const SLAB = 1024;
  const bodies = [0, 1, 5, 100, 600, 2000, 3, 511, 513, 5000, 0, 40].map((n) => r.bytes(n));
  const stream = Buffer.concat(bodies.map(wire));
  const expected = bodies.map(wire);

  it('gives every message whole, in order, wherever the reads split it (every byte boundary)', () => {
    for (let split = 1; split < stream.length; split++) {
      const reader = new MessageReader(() => 1 << 20, SLAB);
      // One read up to `split`, then reads as large as the reader offers.
      const got = feed(reader, stream, (at) => (at < split ? split - at : Infinity));
      expect(got.length, `split at ${split}`).toBe(expected.length);
      // Compared only now: a message pushed early must not have been overwritten by later reads.
      for (const [i, m] of got.entries()) expect(m.equals(expected[i]!), `split at ${split}, message ${i}`).toBe(true);
    }
  });

  it('gives every message whole in reads of 1, 2 and 7 bytes', () => {
    for (const n of [1, 2, 7]) {
      const got = feed(new MessageReader(() => 1 << 20, SLAB), stream, () => n);
      expect(Buffer.concat(got).equals(stream)).toBe(true);
      expect(got.map((m) => m.length)).toEqual(expected.map((m) => m.length));
    }
  });

  it('gives many messages from one read, each a view of the read (no copy)', () => {
    const reader = new MessageReader(() => 1 << 20);
    const small = Array.from({ length: 100 }, (_, i) => wire(r.bytes(i)));
    const all = Buffer.concat(small);
    const into = reader.next();
    all.copy(into);
    const got = reader.read(all.length);
    expect(got.length).toBe(100);
    for (const [i, m] of got.entries()) {
      expect(m.equals(small[i]!)).toBe(true);
      expect(m.buffer).toBe(into.buffer);
    }
  });

  it('reads a message larger than its slab straight into a buffer of its own', () => {
    const reader = new MessageReader(() => 1 << 20, SLAB);
    const big = wire(r.bytes(10 * SLAB));
    const got = feed(reader, big, () => 100);
    expect(got.length).toBe(1);
    expect(got[0]!.equals(big)).toBe(true);
    expect(got[0]!.length).toBe(got[0]!.buffer.byteLength);
  });

  it('refuses a length over the limit from the prefix alone, before allocating for it', () => {
    const alloc = vi.spyOn(Buffer, 'allocUnsafeSlow');
    try {
      const reader = new MessageReader(() => 1000, SLAB);
      alloc.mockClear();
      const into = reader.next();
      into.set([0xff, 0xff, 0xff]);
      expect(() => reader.read(3)).toThrow(expect.objectContaining({ code: 'SYNC_LIMIT' }));
      expect(alloc).not.toHaveBeenCalled();
      // At the limit it is a message.
      const ok = new MessageReader(() => 1000, SLAB);
      expect(feed(ok, wire(Buffer.alloc(1000, 1)), () => 64).length).toBe(1);
    } finally {
      alloc.mockRestore();
    }
  });
});

describe('framedSocket', () => {
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanup.splice(0)) c();
  });

  /** A framed socket accepted by a server and the plain client socket dialled to it (or the reverse). */
  async function pair(side: 'accepted' | 'dialled', max = 1 << 24): Promise<{ framed: net.Socket; plain: net.Socket }> {
    let framed!: net.Socket;
    let plain!: net.Socket;
    const got = new Promise<net.Socket>((resolve) => {
      const srv = net.createServer({ pauseOnConnect: side === 'accepted' }, (s) => resolve(side === 'accepted' ? framedSocket({ accepted: s }, () => max) : s));
      cleanup.push(() => srv.close());
      srv.listen(0, '127.0.0.1', () => {
        const port = (srv.address() as net.AddressInfo).port;
        if (side === 'accepted') plain = net.connect({ host: '127.0.0.1', port });
        else framed = framedSocket({ connect: { host: '127.0.0.1', port } }, () => max);
      });
    });
    const other = await got;
    if (side === 'accepted') framed = other;
    else plain = other;
    for (const s of [framed, plain]) {
      s.on('error', () => undefined);
      cleanup.push(() => s.destroy());
    }
    return { framed, plain };
  }

  /** Collects `framed`'s chunks until it ends. */
  function collect(framed: net.Socket): Promise<Buffer[]> {
    const chunks: Buffer[] = [];
    framed.on('data', (c: Buffer) => chunks.push(c));
    return once(framed, 'end').then(() => chunks);
  }

  for (const side of ['accepted', 'dialled'] as const) {
    it(`${side}: whole messages as chunks, however the writes cut them, then end`, async () => {
      const { framed, plain } = await pair(side);
      const messages = [1, 70000, 3, 300_000, 2_500_000, 0, 17].map((n) => wire(r.bytes(n)));
      const all = Buffer.concat(messages);
      const chunks = collect(framed);
      // Writes cut at odd places, several messages per write and messages across writes.
      for (let at = 0; at < all.length; ) {
        const n = Math.min(all.length - at, 1 + ((at * 7919) % 400_000));
        plain.write(all.subarray(at, at + n));
        at += n;
      }
      plain.end();
      const got = await chunks;
      expect(got.map((c) => c.length)).toEqual(messages.map((m) => m.length));
      for (const [i, c] of got.entries()) expect(c.equals(messages[i]!)).toBe(true);
    });
  }

  it('writes go out unchanged, and the peer closing closes it', async () => {
    const { framed, plain } = await pair('accepted');
    const data: Buffer[] = [];
    plain.on('data', (c: Buffer) => data.push(c));
    framed.end(Buffer.from('hello'));
    await once(plain, 'end');
    expect(Buffer.concat(data).toString()).toBe('hello');
    const closed = once(framed, 'close');
    plain.destroy();
    await closed;
    expect(framed.destroyed).toBe(true);
  });

  it('a hostile length destroys it with SYNC_LIMIT', async () => {
    const { framed, plain } = await pair('accepted', 1000);
    const failed = new Promise<Error>((resolve) => framed.once('error', resolve));
    framed.resume();
    plain.write(Buffer.from([0xff, 0xff, 0xff, 1, 2, 3]));
    expect(await failed).toMatchObject({ code: 'SYNC_LIMIT' });
    await once(plain, 'close');
  });

  it('stops reading while its consumer takes nothing, then gives everything in order', async () => {
    const { framed, plain } = await pair('dialled');
    const messages = Array.from({ length: 64 }, (_, i) => wire(Buffer.alloc(1024 * 1024, i)));
    let written = 0;
    for (const m of messages) {
      plain.write(m);
      written += m.length;
    }
    // Nobody reads `framed`: wait until it stops taking bytes from the kernel.
    let last = -1;
    let still = 0;
    while (still < 20) {
      await new Promise((res) => setTimeout(res, 10));
      still = framed.bytesRead === last ? still + 1 : 0;
      last = framed.bytesRead;
    }
    expect(framed.bytesRead).toBeLessThan(written / 2);
    plain.end();
    const got = await collect(framed);
    expect(got.length).toBe(64);
    for (const [i, c] of got.entries()) expect(c.equals(messages[i]!)).toBe(true);
  });
});
