/**
 * Arrivals (src/sync/arrivals.ts): blocks go from a pull's fetch to its layer writer in memory, the
 * fetch waits once the bound is held, and neither side can hold the other for good (a writer waiting
 * for a block not held, a writer that stopped, a fetch that ended). In-process (the unit lane).
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BLOCK_SIZE } from '../src/content/digest.js';
import { Arrivals } from '../src/sync/arrivals.js';

const block = (i: number) => Buffer.alloc(BLOCK_SIZE, i);
const hashOf = (b: Buffer) => createHash('sha256').update(b).digest();
const blocks = Array.from({ length: 6 }, (_, i) => block(i));
const hashes = blocks.map(hashOf);

/** Whether `p` settled by the time queued callbacks ran. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
}

describe('Arrivals', () => {
  it('holds up to its bound for the writer, then makes the fetch wait until the writer takes one', async () => {
    const a = new Arrivals(hashes, 2 * BLOCK_SIZE);
    expect(await settled(a.arrive(hashes[0]!, blocks[0]!))).toBe(true);
    const second = a.arrive(hashes[1]!, blocks[1]!);
    expect(await settled(second)).toBe(false); // full: the fetch waits
    expect(a.bytes).toBe(2 * BLOCK_SIZE);
    expect((await a.take(hashes[0]!))?.equals(blocks[0]!)).toBe(true);
    expect(await settled(second)).toBe(true);
    expect((await a.take(hashes[1]!))?.equals(blocks[1]!)).toBe(true);
    expect(a.fromMemory).toBe(2);
    expect(a.bytes).toBe(0);
  });

  it('lets the fetch on while the writer waits for a block that is not held (no deadlock)', async () => {
    const a = new Arrivals(hashes, 2 * BLOCK_SIZE);
    await a.arrive(hashes[1]!, blocks[1]!);
    const full = a.arrive(hashes[2]!, blocks[2]!);
    expect(await settled(full)).toBe(false);
    // The writer needs block 0 first (asked again elsewhere, say): the fetch must go on.
    const want0 = a.take(hashes[0]!);
    expect(await settled(full)).toBe(true);
    expect(await settled(a.arrive(hashes[3]!, blocks[3]!))).toBe(true); // not held: over the bound
    const late = a.arrive(hashes[0]!, blocks[0]!);
    expect(await want0).toBeNull(); // arrived with memory full: the writer reads it from the spool
    expect(await settled(late)).toBe(false); // still full, and the writer no longer waits
    expect((await a.take(hashes[1]!))?.equals(blocks[1]!)).toBe(true);
    expect(await settled(late)).toBe(true);
    expect(await a.take(hashes[3]!)).toBeNull();
    expect(a.elsewhere).toBe(2);
  });

  it('stops holding the fetch once the writer stopped, and wakes a waiting writer when the fetch ends', async () => {
    const a = new Arrivals(hashes, 2 * BLOCK_SIZE);
    await a.arrive(hashes[0]!, blocks[0]!);
    const waiting = a.arrive(hashes[1]!, blocks[1]!);
    expect(await settled(waiting)).toBe(false);
    a.endWriter(); // failed, or every layer written
    expect(await settled(waiting)).toBe(true);
    expect(await settled(a.arrive(hashes[2]!, blocks[2]!))).toBe(true);

    const b = new Arrivals(hashes, 2 * BLOCK_SIZE);
    const never = b.take(hashes[5]!);
    expect(await settled(never)).toBe(false);
    b.endFetch();
    expect(await never).toBeNull();
    expect(await b.take(hashes[4]!)).toBeNull(); // asked, never came: no wait once the fetch is over
  });
});
