/**
 * A pull SIGKILLed at each of its named crash points in turn (CLONEBOX_CRASH_AT=N, the point named by
 * CLONEBOX_CRASH_LOG): a block placed in a layer, the layers synced, placed.idx appended, just before
 * the commit, and the next sync's salvage itself. After each kill the next sync completes: it fetches
 * exactly the blocks that were neither durably placed (placed.idx, in a listed temporary) nor spooled,
 * its layers pass `qemu-img compare` against the sharer's and `qemu-img check`, and no temporary is
 * left. Real parts: a private DHT on 127.0.0.1, the built CLI, a sharer running `sync --watch`.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeEntry, PLACED_ENTRY, pathTag } from '../src/sync/placed.js';
import { expectSameChain } from './helpers/chains.js';
import { runCli } from './helpers/cli.js';
import { useSyncTestbed } from './helpers/dht.js';
import { qemuIo } from './helpers/qemu.js';

const MiB = 1024 * 1024;
const tb = useSyncTestbed('clonebox-sync-resume-');
const { home, ok, json, randomFile, diskOf } = tb;

interface ChainDoc {
  vm: string;
  snapshots: string[];
  blocks_fetched: number;
  blocks_reused: number;
}
interface SyncDoc {
  chains: ChainDoc[];
  error?: { code: string };
}

let invite = '';
let sharer: ReturnType<typeof tb.watch>;
/** Distinct blocks of the shared chain (from a pull that was not killed). */
let total = 0;
let receivers = 0;
const A = () => home('a');

/** `snapshot sync` of home `h`, with extra environment; the crash log's names when one is given. */
async function sync(h: string, env: Record<string, string> = {}): Promise<{ code: number; doc: SyncDoc; stderr: string }> {
  const r = await runCli(['snapshot', 'sync', '--team', 'crew', '--bootstrap', tb.bs, '--timeout', '60', '--json'], { home: h, env, timeoutMs: 120_000 });
  return { code: r.code, doc: JSON.parse(r.stdout.trim() || '{}') as SyncDoc, stderr: r.stderr };
}

async function names(log: string): Promise<string[]> {
  return (await readFile(log, 'utf8').catch(() => '')).split('\n').filter(Boolean);
}

async function newReceiver(): Promise<string> {
  const h = home(`recv-${++receivers}`);
  await ok(h, ['team', 'join', 'crew', '--invite', invite, '--name', `ws-recv-${receivers}`]);
  return h;
}

/** The distinct blocks a killed pull left durably: placed in a listed temporary, or in the spool index. */
async function durableBlocks(h: string): Promise<number> {
  const part = path.join(h, 'sync', 'partial');
  const listed = (await readFile(path.join(h, 'sync', 'pull-temps.list'), 'utf8').catch(() => '')).split('\n').filter((l) => l && !l.endsWith('/'));
  const sizes = new Map<string, number>();
  for (const f of listed) {
    const s = await stat(f).catch(() => null);
    if (s) sizes.set(pathTag(f).toString('hex'), s.size);
  }
  const held = new Set<string>();
  const placed = await readFile(path.join(part, 'placed.idx')).catch(() => Buffer.alloc(0));
  for (let i = 0; i + PLACED_ENTRY <= placed.length; i += PLACED_ENTRY) {
    const e = decodeEntry(placed.subarray(i, i + PLACED_ENTRY));
    const size = e ? sizes.get(e.tag) : undefined;
    if (e && size !== undefined && e.host + e.length <= size) held.add(e.sha.toString('hex'));
  }
  const idx = await readFile(path.join(part, 'blocks.idx')).catch(() => Buffer.alloc(0));
  const dat = await stat(path.join(part, 'blocks.dat')).then(
    (s) => s.size,
    () => 0,
  );
  for (let i = 0; i + 44 <= idx.length; i += 44) {
    if (Number(idx.readBigUInt64BE(i + 32)) + idx.readUInt32BE(i + 40) <= dat) held.add(idx.subarray(i, i + 32).toString('hex'));
  }
  return held.size;
}

async function sweep(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sweep(p)));
    else out.push(p);
  }
  return out;
}

/** The next sync completes the pull, fetching only what was not kept, and leaves no temporary. */
async function expectResumed(h: string, what: string): Promise<void> {
  const kept = await durableBlocks(h);
  const r = await sync(h);
  expect(r.code, `${what}: ${r.stderr}`).toBe(0);
  const c = r.doc.chains.find((x) => x.vm === 'res');
  expect(c, what).toBeDefined();
  expect(c!.snapshots).toEqual(['one', 'two']);
  expect({ reused: c!.blocks_reused, fetched: c!.blocks_fetched }, what).toEqual({ reused: kept, fetched: total - kept });
  await expectSameChain(A(), 'res', h, 'res', { sameTree: true });
  expect(await readFile(path.join(h, 'sync', 'pull-temps.list'), 'utf8')).toBe('');
  expect((await sweep(h)).filter((f) => path.basename(f).includes('.sync-'))).toEqual([]);
  expect(await readdir(path.join(h, 'sync', 'partial'))).toEqual([]);
  process.stderr.write(`resume after ${what}: ${kept} of ${total} blocks kept, ${c!.blocks_fetched} fetched\n`);
}

describe('a pull killed at each named step resumes with what it had made durable', () => {
  beforeAll(async () => {
    await ok(A(), ['vm', 'create', 'res', '--size', '64M']);
    const disk = await diskOf(A(), 'res');
    // 24 MiB of random blocks (more than one 16 MiB sync of placed blocks), and a block 64 times over
    // (read back from the layer being written).
    await qemuIo(disk, `write -s ${await randomFile('r24', 24 * MiB)} 0 24M`);
    await qemuIo(disk, 'write -P 0x33 32M 4M');
    await ok(A(), ['snapshot', 'create', 'res', '--name', 'one']);
    // The child: new random blocks, and blocks of its parent again (read back from the parent's layer).
    await qemuIo(disk, `write -s ${await randomFile('r4', 4 * MiB)} 40M 4M`);
    await qemuIo(disk, `write -s ${path.join(tb.root, 'r24')} 48M 4M`);
    await ok(A(), ['snapshot', 'create', 'res', '--name', 'two']);
    invite = (await json<{ invite: string }>(A(), ['team', 'create', 'crew', '--name', 'ws-a'])).invite;
    await ok(A(), ['snapshot', 'share', 'res', '--team', 'crew']);
    sharer = tb.watch(A(), 'crew');
  });

  afterAll(async () => {
    await sharer?.stop();
  });

  let sequence: string[] = [];

  it('a pull that is not killed passes every named point (the map of the runs below)', async () => {
    const h = await newReceiver();
    const log = path.join(tb.root, 'log-full');
    const r = await sync(h, { CLONEBOX_CRASH_LOG: log });
    expect(r.code, r.stderr).toBe(0);
    const c = r.doc.chains.find((x) => x.vm === 'res')!;
    total = c.blocks_fetched;
    expect(total).toBe(24 * 16 + 1 + 4 * 16);
    expect(c.blocks_reused).toBe(0);
    sequence = await names(log);
    for (const n of ['sync-block-placed', 'sync-layer-synced', 'sync-placed-appended', 'sync-commit']) expect(sequence, n).toContain(n);
    expect(sequence).not.toContain('sync-salvage');
    await expectSameChain(A(), 'res', h, 'res', { sameTree: true });
  });

  for (const point of ['sync-block-placed', 'sync-layer-synced', 'sync-placed-appended', 'sync-commit']) {
    it(`killed at ${point}`, async () => {
      expect(total).toBeGreaterThan(0);
      const h = await newReceiver();
      const log = path.join(tb.root, `log-${point}`);
      const r = await sync(h, { CLONEBOX_CRASH_AT: point, CLONEBOX_CRASH_LOG: log });
      expect(r.code, 'the run was not killed').not.toBe(0);
      expect((await names(log)).at(-1)).toBe(point);
      expect((await json<{ name: string }[]>(h, ['vm', 'list'])).map((v) => v.name)).not.toContain('res');
      await expectResumed(h, `a kill at ${point}`);
    });
  }

  it("killed at sync-salvage (the next sync's, after a kill at sync-placed-appended), then resumed", async () => {
    const h = await newReceiver();
    const r1 = await sync(h, { CLONEBOX_CRASH_AT: 'sync-placed-appended' });
    expect(r1.code).not.toBe(0);
    const kept = await durableBlocks(h);
    const log = path.join(tb.root, 'log-s2');
    const r2 = await sync(h, { CLONEBOX_CRASH_AT: 'sync-salvage', CLONEBOX_CRASH_LOG: log });
    expect(r2.code, 'the second run was not killed').not.toBe(0);
    expect(await names(log)).toEqual(['sync-salvage']); // the first step of the next sync
    // The blocks are in the spool now, and still in the listed layers: kept either way.
    expect(await durableBlocks(h)).toBe(kept);
    await expectResumed(h, 'a kill at sync-salvage');
  });
});
