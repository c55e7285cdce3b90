import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Clonebox } from '../src/index.js';
import { expectSameChain } from './helpers/chains.js';
import { useSyncTestbed } from './helpers/dht.js';
import { qemuIo } from './helpers/qemu.js';

const MiB = 1024 * 1024;
const tb = useSyncTestbed('clonebox-sync-history-', { timeoutMs: 120_000 });
const { home, ok, json, randomFile, diskOf } = tb;

interface SnapshotDoc {
  name: string;
  parent: string | null;
  children: string[];
  current: boolean;
}
interface ChainDoc {
  vm: string;
  snapshots: string[];
  blocks_fetched: number;
  bytes_received: number;
}
interface SyncDoc {
  chains: ChainDoc[];
  bytes_received: number;
}

function sync(h: string, team: string, timeoutS = 90): Promise<{ code: number; doc: SyncDoc; stderr: string }> {
  return tb.sync<SyncDoc>(h, team, timeoutS);
}

/** name -> parent, for a VM's snapshots. */
async function parents(h: string, vm: string): Promise<Record<string, string | null>> {
  const list = await json<SnapshotDoc[]>(h, ['snapshot', 'list', vm], 120_000);
  return Object.fromEntries(list.map((s) => [s.name, s.parent]).sort());
}

describe('snapshots with identical content on one parent stay distinct through a sync', () => {
  const A = () => home('twins-a');
  const B = () => home('twins-b');
  let sharer: ReturnType<typeof tb.watch>;

  beforeAll(async () => {
    await ok(A(), ['vm', 'create', 'dev', '--size', '32M']);
    const disk = await diskOf(A(), 'dev');
    await qemuIo(disk, `write -s ${await randomFile('twins-r1', MiB)} 0 1M`);
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'base']);
    // Right after base, nothing written: an empty layer on base.
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'e1']);
    // A branch point on base: another empty layer on base, the same content as e1.
    await ok(A(), ['snapshot', 'branch', 'dev', 'bp', '--from', 'base']);
    await qemuIo(disk, 'write -P 0x5a 4M 1M');
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'x1']);
    await ok(A(), ['snapshot', 'restore', 'dev', '--name', 'bp', '--yes']);
    await qemuIo(await diskOf(A(), 'dev'), 'write -P 0x6b 8M 1M');
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'y1']);
    const invite = (await json<{ invite: string }>(A(), ['team', 'create', 'twins', '--name', 'ws-a'])).invite;
    await ok(A(), ['snapshot', 'share', 'dev', '--team', 'twins']);
    await ok(B(), ['team', 'join', 'twins', '--invite', invite, '--name', 'ws-b']);
    sharer = tb.watch(A(), 'twins');
  }, 180_000);

  afterAll(async () => {
    await sharer?.stop();
  });

  it('pulls both twins, each with its own children, and fetches their shared blocks once', async () => {
    const r = await sync(B(), 'twins');
    expect(r.code, r.stderr).toBe(0);
    expect(r.doc.chains).toHaveLength(1);
    const c = r.doc.chains[0]!;
    expect(c.vm).toBe('dev');
    expect([...c.snapshots].sort()).toEqual(['base', 'bp', 'e1', 'x1', 'y1']);
    // 16 random blocks (base), one 0x5a block and one 0x6b block: nothing twice.
    expect(c.blocks_fetched).toBe(18);
    expect(await parents(B(), 'dev')).toEqual({ base: null, bp: 'base', e1: 'base', x1: 'e1', y1: 'bp' });
    await expectSameChain(A(), 'dev', B(), 'dev', { sameTree: true });
    const list = await json<SnapshotDoc[]>(B(), ['snapshot', 'list', 'dev']);
    expect(list.find((s) => s.current)?.name).toBe('y1');
  }, 240_000);

  it('a later pull extends the VM that holds the twins, with a third twin and a child of one', async () => {
    await sharer.stop();
    // A third empty snapshot on base, and an empty child of e1 (same content as x1's parent state).
    await ok(A(), ['snapshot', 'branch', 'dev', 'bp2', '--from', 'base']);
    await ok(A(), ['snapshot', 'branch', 'dev', 'e1b', '--from', 'e1']);
    await ok(A(), ['snapshot', 'restore', 'dev', '--name', 'bp2', '--yes']);
    await qemuIo(await diskOf(A(), 'dev'), 'write -P 0x7c 12M 1M');
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'z1']);
    sharer = tb.watch(A(), 'twins');
    const r = await sync(B(), 'twins');
    expect(r.code, r.stderr).toBe(0);
    expect(r.doc.chains).toHaveLength(1);
    const c = r.doc.chains[0]!;
    expect(c.vm).toBe('dev');
    expect([...c.snapshots].sort()).toEqual(['bp2', 'e1b', 'z1']);
    expect(c.blocks_fetched).toBe(1);
    expect(await parents(B(), 'dev')).toEqual({ base: null, bp: 'base', bp2: 'base', e1: 'base', e1b: 'e1', x1: 'e1', y1: 'bp', z1: 'bp2' });
    await expectSameChain(A(), 'dev', B(), 'dev', { sameTree: true });
    // Caught up: nothing more to pull.
    const again = await sync(B(), 'twins');
    expect(again.code, again.stderr).toBe(0);
    expect(again.doc.bytes_received).toBe(0);
    expect(again.doc.chains.flatMap((x) => x.snapshots)).toEqual([]);
  }, 240_000);
});

describe('a chain of a few hundred snapshots', () => {
  const N = 300;
  const A = () => home('long-a');
  const B = () => home('long-b');
  const C = () => home('long-c');
  const nameOf = (i: number) => `s${String(i).padStart(3, '0')}`;
  let sharer: ReturnType<typeof tb.watch> | null = null;

  beforeAll(async () => {
    await ok(A(), ['vm', 'create', 'dev', '--size', '64M']);
    const disk = await diskOf(A(), 'dev');
    const src = await randomFile('long-r', MiB);
    const api = await Clonebox.open({ home: A() });
    try {
      for (let i = 0; i < N; i++) {
        // Some data every 50 snapshots (a 64 KiB piece of its own), the rest empty layers in a line.
        if (i % 50 === 0) await qemuIo(disk, `write -s ${src} ${(i / 50) * MiB} 64k`);
        await api.snapshots.create('dev', { name: nameOf(i) });
      }
    } finally {
      await api.close();
    }
  }, 600_000);

  afterAll(async () => {
    await sharer?.stop();
  });

  it('lists every snapshot, in one line', async () => {
    const list = await json<SnapshotDoc[]>(A(), ['snapshot', 'list', 'dev']);
    expect(list).toHaveLength(N);
    const byName = new Map(list.map((s) => [s.name, s]));
    for (let i = 0; i < N; i++) {
      const s = byName.get(nameOf(i))!;
      expect(s.parent).toBe(i === 0 ? null : nameOf(i - 1));
      expect(s.children).toEqual(i === N - 1 ? [] : [nameOf(i + 1)]);
    }
    expect(list.find((s) => s.current)?.name).toBe(nameOf(N - 1));
  }, 120_000);

  it('exports --since the last snapshot alone, which imports on top of the chain', async () => {
    const full = path.join(tb.root, 'long-full.cbx');
    const inc = path.join(tb.root, 'long-inc.cbx');
    const a = await json<{ snapshots: string[] }>(A(), ['snapshot', 'export', 'dev', '--name', nameOf(N - 2), '-o', full], 300_000);
    expect(a.snapshots).toHaveLength(N - 1);
    const b = await json<{ snapshots: string[]; since: string | null }>(A(), ['snapshot', 'export', 'dev', '--since', nameOf(N - 2), '-o', inc]);
    expect(b).toMatchObject({ snapshots: [nameOf(N - 1)], since: nameOf(N - 2) });
    await ok(C(), ['snapshot', 'import', 'dev', full], 300_000);
    const got = await json<{ snapshots: string[] }>(C(), ['snapshot', 'import', 'dev', inc]);
    expect(got.snapshots).toEqual([nameOf(N - 1)]);
    expect(await parents(C(), 'dev')).toEqual(await parents(A(), 'dev'));
    await expectSameChain(A(), 'dev', C(), 'dev', { names: [nameOf(0), nameOf(150), nameOf(N - 2), nameOf(N - 1)], sameLayers: true });
  }, 600_000);

  it('syncs the whole chain, then only a new snapshot', async () => {
    const invite = (await json<{ invite: string }>(A(), ['team', 'create', 'long', '--name', 'ws-a'])).invite;
    await ok(A(), ['snapshot', 'share', 'dev', '--team', 'long'], 300_000);
    await ok(B(), ['team', 'join', 'long', '--invite', invite, '--name', 'ws-b']);
    sharer = tb.watch(A(), 'long');
    const r = await sync(B(), 'long', 240);
    expect(r.code, r.stderr).toBe(0);
    expect(r.doc.chains.flatMap((c) => c.snapshots)).toHaveLength(N);
    expect(await parents(B(), 'dev')).toEqual(await parents(A(), 'dev'));
    await expectSameChain(A(), 'dev', B(), 'dev', { names: [nameOf(0), nameOf(150), nameOf(N - 1)] });

    await sharer.stop();
    await qemuIo(await diskOf(A(), 'dev'), `write -s ${await randomFile('long-r2', MiB)} 40M 1M`);
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'more']);
    sharer = tb.watch(A(), 'long');
    const r2 = await sync(B(), 'long');
    expect(r2.code, r2.stderr).toBe(0);
    expect(r2.doc.chains.flatMap((c) => c.snapshots)).toEqual(['more']);
    expect(r2.doc.chains[0]!.blocks_fetched).toBe(16);
    await expectSameChain(A(), 'dev', B(), 'dev', { names: ['more', nameOf(N - 1)] });
    expect((await parents(B(), 'dev')).more).toBe(nameOf(N - 1));
  }, 900_000);
});
