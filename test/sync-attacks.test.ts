/**
 * Attacks of a team member (issue #11, sync side), each performed through the real CLI between homes
 * on a private 3-node DHT on 127.0.0.1: a sharer runs `snapshot sync --watch` as a child process
 * (stopped with SIGTERM), receivers run `snapshot sync --json`.
 *
 *  1. A member pulls a VM, writes into it, snapshots and shares it back: the author's own VM must not
 *     gain that snapshot nor boot its disk, and the author must not publish it as its own.
 *  2. A catalog Map record holding one Zero range over a huge disk (the zero-range bomb) is refused by
 *     the write budget before anything is asked for or written; a root's zero ranges cost nothing.
 *  6. Local blocks are reused only from VMs shared with, or pulled from, the team (no presence oracle);
 *     and a sharer serves, and names in its catalog, only blocks of those: a member asking it for
 *     blocks of an unshared VM, of a VM shared with another team, or pulled from another team, gets
 *     the answer it gets for blocks that exist nowhere.
 *  7. A teammate's catalog beyond the per-member limits is not downloaded nor pulled.
 *  8. A pull into a new VM never renames over an existing disk file (left by `vm remove`).
 */
import type { ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { contentId } from '../src/snapshots/identity.js';
import { resolveHome } from '../src/store/home.js';
import { BlockChannel, type FetchResult } from '../src/sync/blocks.js';
import { type PrivateDht, startPrivateDht } from '../src/sync/bootstrap.js';
import { Catalog, syncDir } from '../src/sync/catalog.js';
import type { CatalogRecord, MapItem } from '../src/sync/catalog-records.js';
import { ensureIdentity } from '../src/sync/identity.js';
import { digestOfItems } from '../src/sync/layermap.js';
import { BLOCKS_PROTOCOL } from '../src/sync/messages.js';
import { type TeamPeer, TeamSwarm } from '../src/sync/swarm.js';
import { loadTeam } from '../src/sync/teams.js';
import { expectSameChain } from './helpers/chains.js';
import { cb, runCli } from './helpers/cli.js';
import { watchSync } from './helpers/dht.js';
import { run } from './helpers/process.js';
import { qemuIo } from './helpers/qemu.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;
let net: PrivateDht;
let root: string;
let bs: string;
let invite = '';
const children = new Set<ChildProcess>();

beforeAll(async () => {
  net = await startPrivateDht({ host: '127.0.0.1', port: 0 });
  bs = `${net.address.host}:${net.address.port}`;
  root = await makeTempDir('clonebox-sync-attacks-');
});

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await net?.close();
  await cleanupTempDirs();
});

const home = (n: string) => path.join(root, n);

async function ok(h: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const r = await cb(h, args, timeoutMs);
  if (r.code !== 0) throw new Error(`clonebox ${args.join(' ')} (home ${path.basename(h)}) exited ${r.code}\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}
const json = async <T = unknown>(h: string, args: string[]): Promise<T> => JSON.parse(await ok(h, [...args, '--json'])) as T;

interface ChainDoc {
  vm: string;
  remote_vm: string;
  peer: string;
  snapshots: string[];
  blocks_fetched: number;
  blocks_reused: number;
}
interface SyncDoc {
  peers: string[];
  chains: ChainDoc[];
  error?: { code: string; message: string };
}

async function diskOf(h: string, vm: string): Promise<string> {
  return (await json<{ disks: { path: string }[] }>(h, ['vm', 'show', vm])).disks[0]!.path;
}

const sha = async (f: string) =>
  createHash('sha256')
    .update(await readFile(f))
    .digest('hex');

function watch(h: string): { stop(): Promise<void>; stderr(): string } {
  return watchSync(h, { team: 'crew', bootstrap: bs, children });
}

async function sync(h: string, timeoutS = 60): Promise<{ code: number; doc: SyncDoc; stderr: string }> {
  const r = await cb(h, ['snapshot', 'sync', '--team', 'crew', '--bootstrap', bs, '--timeout', String(timeoutS), '--json'], (timeoutS + 20) * 1000);
  return { code: r.code, doc: JSON.parse(r.stdout.trim() || '{}') as SyncDoc, stderr: r.stderr };
}

async function join(h: string, name: string): Promise<void> {
  await ok(h, ['team', 'join', 'crew', '--invite', invite, '--name', name]);
}

/**
 * Appends to the catalog of home `h` (not running) a shared VM `vm` whose snapshots (`z0`, `z1`, ...)
 * have one disk of `virtualSize` with the given maps, with true digests and content ids (what a
 * modified clonebox can publish), and lists it in shares.json so that the next sync keeps it shared.
 * Returns the catalog's key.
 */
async function forgeChain(h: string, vm: string, virtualSize: number, layers: MapItem[][]): Promise<Buffer> {
  const hm = resolveHome(h);
  const cat = await Catalog.openOwn(hm, await loadTeam(hm, 'crew'), await ensureIdentity(hm));
  const key = cat.key;
  try {
    const recs: CatalogRecord[] = [{ kind: 'share', vm, upto: null, at: new Date(0).toISOString() }];
    let parent: string | null = null;
    for (const [i, items] of layers.entries()) {
      const digest = digestOfItems(virtualSize, 65536, items).digest();
      const id = contentId(parent, [{ target: 'vda', digest }]);
      recs.push({ kind: 'map', vm, target: 'vda', items });
      recs.push({
        kind: 'snapshot',
        vm,
        name: `z${i}`,
        content_id: Buffer.from(id, 'hex'),
        parent: parent === null ? null : Buffer.from(parent, 'hex'),
        parent_name: parent === null ? null : `z${i - 1}`,
        type: 'disk',
        created_at: new Date(0).toISOString(),
        description: null,
        tags: [],
        auto_created: false,
        auto_policy: null,
        disks: [
          {
            target: 'vda',
            virtual_size: virtualSize,
            cluster_size: 65536,
            digest,
            data_bytes: items.reduce((a, it) => a + (it.kind === 'block' ? it.length : 0), 0),
            zero_bytes: items.reduce((a, it) => a + (it.kind === 'zero' ? it.length : 0), 0),
            blocks: items.filter((it) => it.kind === 'block').length,
            map_start: cat.length + recs.length - 1,
            map_count: 1,
          },
        ],
      });
      parent = id;
    }
    await cat.append(recs);
  } finally {
    await cat.close();
  }
  const file = path.join(syncDir(hm, 'crew'), 'shares.json');
  const doc = JSON.parse(await readFile(file, 'utf8').catch(() => '{"format":1,"vms":{}}')) as { vms: Record<string, unknown> };
  doc.vms[vm] = { upto: null, since: new Date(0).toISOString() };
  await writeFile(file, JSON.stringify(doc));
  return key;
}

/** A chain of `layers` snapshots whose layers are each one Zero range over the whole disk. */
async function forgeZeroChain(h: string, vm: string, virtualSize: number, layers: number): Promise<void> {
  await forgeChain(
    h,
    vm,
    virtualSize,
    Array.from({ length: layers }, () => [{ kind: 'zero' as const, offset: 0, length: virtualSize }]),
  );
}

/** SHA-256 of each 64 KiB block of `data`: the ids a member asks a sharer for. */
function blockIds(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; at += 65536)
    out.push(
      createHash('sha256')
        .update(data.subarray(at, at + 65536))
        .digest(),
    );
  return out;
}

/**
 * Member home `h` asks the first teammate it meets (the only one online) for `hashes` over the block
 * protocol, as a modified clonebox would: any hash, not only those of a catalog it pulls.
 */
async function probe(h: string, hashes: Buffer[]): Promise<FetchResult> {
  const hm = resolveHome(h);
  let attached!: (bc: BlockChannel) => void;
  const ready = new Promise<BlockChannel>((res) => {
    attached = res;
  });
  const swarm = await TeamSwarm.open({
    home: hm,
    team: await loadTeam(hm, 'crew'),
    identity: await ensureIdentity(hm),
    bootstrap: [net.address],
    deadline: Date.now() + 20_000,
    services: { [BLOCKS_PROTOCOL]: (peer: TeamPeer) => attached(BlockChannel.attach(peer.mux, {})) },
  });
  try {
    const ch = await ready;
    return await ch.fetch(hashes, { onBlock: () => undefined, deadline: Date.now() + 30_000 });
  } finally {
    await swarm.close();
  }
}

const A = () => home('a');
const M = () => home('m');

describe('what a team member cannot do to a teammate', () => {
  let sharer: ReturnType<typeof watch> | null = null;

  beforeAll(async () => {
    await ok(A(), ['vm', 'create', 'web', '--size', '16M']);
    await qemuIo(await diskOf(A(), 'web'), 'write -P 0x11 0 2M');
    await ok(A(), ['snapshot', 'create', 'web', '--name', 's1']);
    invite = (await json<{ invite: string }>(A(), ['team', 'create', 'crew', '--name', 'ws-a'])).invite;
    await ok(A(), ['snapshot', 'share', 'web', '--team', 'crew']);
  });

  afterAll(async () => {
    await sharer?.stop();
  });

  it("attack 1: a member's snapshot on top of our own VM's chain never lands in that VM, and is not republished as ours", async () => {
    sharer = watch(A());
    await join(M(), 'ws-m');
    const first = await sync(M());
    expect(first.code, first.stderr).toBe(0);
    expect(first.doc.chains.map((c) => [c.vm, c.snapshots])).toEqual([['web', ['s1']]]);
    const m1 = await readFile(path.join(M(), 'vms', 'web', 'snapshots', 's1.json'), 'utf8');
    await sharer.stop();
    sharer = null;

    // M writes its own data into its copy, snapshots and shares it back, as a member running a
    // modified (or older) clonebox that republishes what it pulled: its s1 record says nothing of A.
    await qemuIo(await diskOf(M(), 'web'), 'write -P 0x66 0 1M');
    await ok(M(), ['snapshot', 'create', 'web', '--name', 's2']);
    const { origin: _dropped, ...stripped } = JSON.parse(m1) as Record<string, unknown>;
    await writeFile(path.join(M(), 'vms', 'web', 'snapshots', 's1.json'), JSON.stringify(stripped));
    const shared = await json<{ published: string[] }>(M(), ['snapshot', 'share', 'web', '--team', 'crew']);
    expect(shared.published).toEqual(['s1', 's2']);

    // A's web: stopped since s1 (its overlay is empty), the state in which a fast-forward moved it
    // onto M's layer before.
    const vmJson = await readFile(path.join(A(), 'vms', 'web', 'vm.json'), 'utf8');
    const aDisk = await diskOf(A(), 'web');
    const diskSum = await sha(aDisk);
    sharer = watch(M());
    const r = await sync(A());
    expect(r.code, r.stderr).toBe(0);
    const c = r.doc.chains.find((x) => x.remote_vm === 'web');
    expect(c, r.stderr).toBeDefined();
    expect(c!.vm).toBe('web.ws-m');
    expect(c!.snapshots).toEqual(['s1', 's2']);
    expect(r.stderr).toMatch(/VM web here is not ws-m's web \(snapshot s1 was made here\): left untouched/);
    expect(await readFile(path.join(A(), 'vms', 'web', 'vm.json'), 'utf8')).toBe(vmJson);
    expect((await json<{ name: string }[]>(A(), ['snapshot', 'list', 'web'])).map((s) => s.name)).toEqual(['s1']);
    expect(await sha(aDisk)).toBe(diskSum);
    // The overlay A boots still stands on A's own s1 layer.
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', aDisk])).stdout) as { 'full-backing-filename'?: string };
    expect(path.basename(info['full-backing-filename'] ?? '')).toBe('web@s1.qcow2');
    await expectSameChain(M(), 'web', A(), 'web.ws-m', { sameTree: true });

    // What A pulled is M's: sharing that VM publishes none of it as A's.
    const again = await json<{ published: string[] }>(A(), ['snapshot', 'share', 'web.ws-m', '--team', 'crew']);
    expect(again.published).toEqual([]);
    await ok(A(), ['snapshot', 'unshare', 'web.ws-m', '--team', 'crew']);
    // Provenance: a pulled record names its author and the author's catalog.
    const origin = (JSON.parse(m1) as { origin?: Record<string, unknown> }).origin;
    expect(origin).toMatchObject({ kind: 'pulled', team: 'crew', member: 'ws-a' });
    expect(origin!.catalog_key).toMatch(/^[0-9a-f]{64}$/);
    const pulled = JSON.parse(await readFile(path.join(A(), 'vms', 'web.ws-m', 'snapshots', 's2.json'), 'utf8')) as { origin?: Record<string, unknown> };
    expect(pulled.origin).toMatchObject({ kind: 'pulled', member: 'ws-m' });
  });

  it('attack 8: a pull into a new VM never renames over a disk file left by `vm remove`', async () => {
    await sharer?.stop();
    sharer = watch(A());
    const N = home('n');
    await join(N, 'ws-n');
    await ok(N, ['vm', 'create', 'web', '--size', '8M']);
    const left = await diskOf(N, 'web');
    await qemuIo(left, 'write -P 0x77 0 1M');
    await ok(N, ['vm', 'remove', 'web', '--yes']); // files kept
    const before = await sha(left);
    const r = await sync(N);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`file already exists, ${left}`);
    expect(await sha(left)).toBe(before);
    expect(await json(N, ['vm', 'list'])).toEqual([]);
  });

  it('attack 6: blocks of an unshared VM are never reused for a pull (no presence oracle)', async () => {
    await sharer?.stop();
    const secret = path.join(root, 'secret.bin');
    await writeFile(secret, randomBytes(MiB));
    // B holds the candidate blocks in a VM it shares with nobody.
    const B = home('b');
    await join(B, 'ws-b');
    await ok(B, ['vm', 'create', 'priv', '--size', '8M']);
    await qemuIo(await diskOf(B, 'priv'), `write -s ${secret} 0 1M`);
    await ok(B, ['snapshot', 'create', 'priv', '--name', 'p1']);
    // A shares a chain of those candidate blocks.
    await ok(A(), ['vm', 'create', 'probe', '--size', '8M']);
    await qemuIo(await diskOf(A(), 'probe'), `write -s ${secret} 0 1M`);
    await ok(A(), ['snapshot', 'create', 'probe', '--name', 'q1']);
    await ok(A(), ['snapshot', 'share', 'probe', '--team', 'crew']);
    sharer = watch(A());
    const r = await sync(B);
    expect(r.code, r.stderr).toBe(0);
    const c = r.doc.chains.find((x) => x.remote_vm === 'probe')!;
    expect(c, r.stderr).toBeDefined();
    // All 16 blocks asked for: A learns nothing of priv.
    expect([c.blocks_fetched, c.blocks_reused]).toEqual([16, 0]);
    await expectSameChain(A(), 'probe', B, 'probe', { sameTree: true });
  });

  it("attack 7: a teammate's catalog beyond the per-member limit is neither downloaded nor pulled, and the run names it", async () => {
    const L = home('l');
    await join(L, 'ws-l');
    const r = await runCli(['snapshot', 'sync', '--team', 'crew', '--bootstrap', bs, '--timeout', '60', '--json'], {
      home: L,
      env: { CLONEBOX_SYNC_MAX_CATALOG_ENTRIES: '4' },
      timeoutMs: 80_000,
    });
    expect(r.code, r.stderr).toBe(1);
    const doc = JSON.parse(r.stdout) as SyncDoc;
    expect(doc.error?.code).toBe('SYNC_LIMIT');
    expect(r.stderr).toMatch(/the catalog of ws-a holds \d+ entries, more than the limit of 4 \(a per-member limit\): none of its chains are pulled/);
    expect(await json(L, ['vm', 'list'])).toEqual([]);
  });

  it('attack 2: a zero-range bomb in a catalog is refused by the write budget, naming the member and the VM; nothing is written, other chains pull', async () => {
    await sharer?.stop();
    sharer = null;
    const X = home('x');
    await join(X, 'ws-x');
    // A legit chain with zero ranges: a root, then a child that zeroes part of the root's data.
    await ok(X, ['vm', 'create', 'fine', '--size', '16M']);
    await qemuIo(await diskOf(X, 'fine'), 'write -P 0x22 0 4M');
    await ok(X, ['snapshot', 'create', 'fine', '--name', 'f1']);
    await qemuIo(await diskOf(X, 'fine'), 'write -z 1M 2M');
    await ok(X, ['snapshot', 'create', 'fine', '--name', 'f2']);
    await ok(X, ['snapshot', 'share', 'fine', '--team', 'crew']);
    // 2 PiB in one Zero item: above the virtual-size cap.
    await forgeZeroChain(X, 'bomb', 2 * 1024 * TiB, 1);
    // 8 TiB zeroed over an 8 TiB root: the child's zero clusters would take 1 GiB of L2 tables.
    await forgeZeroChain(X, 'wide', 8 * TiB, 2);
    // The same root alone: its zero range is not written at all.
    await forgeZeroChain(X, 'flat', 8 * TiB, 1);
    sharer = watch(X);
    const R = home('r');
    await join(R, 'ws-r');
    const r = await runCli(['snapshot', 'sync', '--team', 'crew', '--bootstrap', bs, '--timeout', '60', '--max-write', '256M', '--json'], {
      home: R,
      timeoutMs: 80_000,
    });
    expect(r.code, r.stderr).toBe(1);
    expect((JSON.parse(r.stdout) as SyncDoc).error?.code).toBe('BUDGET_EXCEEDED');
    expect(r.stderr).toMatch(/pull bomb from ws-x failed: pull of ws-x's bomb \(snapshot z0, disk vda\) has a disk of 2.00 PiB, above the cap of 16.0 TiB/);
    expect(r.stderr).toMatch(/pull wide from ws-x failed: pull of ws-x's wide would write more than the limit of 256 MiB \(at least 1.00 GiB\)/);
    // Nothing of the refused chains: no record, no directory, no file.
    expect((await json<{ name: string }[]>(R, ['vm', 'list'])).map((v) => v.name).sort()).toEqual(['fine', 'flat']);
    expect((await readdir(path.join(R, 'disks'))).sort()).toEqual(['fine', 'flat']);
    // The root's 8 TiB of zeros cost its header and L1 table, and read as zero.
    const flat = path.join(R, 'disks', 'flat');
    for (const f of await readdir(flat)) expect((await stat(path.join(flat, f))).size, f).toBeLessThan(MiB);
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', await diskOf(R, 'flat')])).stdout) as { data: boolean; zero: boolean }[];
    expect(map.every((e) => !e.data)).toBe(true);
    // The legit chain is identical, its child's zero range included.
    await expectSameChain(X, 'fine', R, 'fine', { sameTree: true });
    // Attack 9, sync side: what a pull leaves is private (layers and maps 0600, their directories,
    // the catalogs' storage with its signing seed, and the home 0700).
    const mode = async (f: string) => (await stat(f)).mode & 0o777;
    for (const d of [R, path.join(R, 'sync'), path.join(R, 'sync', 'maps'), path.join(R, 'sync', 'crew', 'catalog')]) expect(await mode(d), d).toBe(0o700);
    const maps = await readdir(path.join(R, 'sync', 'maps'));
    expect(maps.length).toBeGreaterThan(0);
    for (const f of maps) expect(await mode(path.join(R, 'sync', 'maps', f)), f).toBe(0o600);
    for (const f of await readdir(path.join(R, 'disks', 'fine'))) expect(await mode(path.join(R, 'disks', 'fine', f)), f).toBe(0o600);
    await sharer.stop();
    sharer = null;
  });

  it('attack 6, serving side: a member neither gets nor learns of blocks of VMs not shared with its team', async () => {
    await sharer?.stop();
    sharer = null;
    const S = home('s');
    const O = home('o');
    const data = (n: number) => {
      const b = randomBytes(512 * 1024);
      b[0] = n;
      return b;
    };
    const [pub, priv, away, theirs] = [data(1), data(2), data(3), data(4)];
    const put = async (h: string, vm: string, bytes: Buffer) => {
      const f = path.join(root, `${vm}.bin`);
      await writeFile(f, bytes);
      await ok(h, ['vm', 'create', vm, '--size', '4M']);
      await qemuIo(await diskOf(h, vm), `write -s ${f} 0 512K`);
      await ok(h, ['snapshot', 'create', vm, '--name', `${vm}1`]);
    };
    // S is in crew and in another team, `other`: it shares `pub` with crew, `away` with other, keeps
    // `priv` to itself, and pulled `theirs` from other.
    await join(S, 'ws-s');
    const other = (await json<{ invite: string }>(O, ['team', 'create', 'other', '--name', 'ws-o'])).invite;
    await ok(S, ['team', 'join', 'other', '--invite', other, '--name', 'ws-s']);
    await put(O, 'theirs', theirs);
    await ok(O, ['snapshot', 'share', 'theirs', '--team', 'other']);
    const o = watchSync(O, { team: 'other', bootstrap: bs, children });
    try {
      const r = await cb(S, ['snapshot', 'sync', '--team', 'other', '--bootstrap', bs, '--timeout', '60', '--json'], 80_000);
      expect(r.code, r.stderr).toBe(0);
      expect((JSON.parse(r.stdout) as SyncDoc).chains.map((c) => c.vm)).toEqual(['theirs']);
    } finally {
      await o.stop();
    }
    await put(S, 'pub', pub);
    await put(S, 'priv', priv);
    await put(S, 'away', away);
    await ok(S, ['snapshot', 'share', 'pub', '--team', 'crew']);
    await ok(S, ['snapshot', 'share', 'away', '--team', 'other']);
    await ok(S, ['snapshot', 'share', 'theirs', '--team', 'crew']); // shares nothing of O's: it is O's
    sharer = watch(S);

    // P, a member of crew who knows the content of priv and theirs, publishes records of it (their
    // true maps, digests and content ids, so they name S's snapshots): a sharer that served every
    // local snapshot a teammate's catalog names would now serve them to P.
    const P = home('p');
    await join(P, 'ws-p');
    const layer = (b: Buffer): MapItem[] => blockIds(b).map((sha, i) => ({ kind: 'block', offset: i * 65536, length: 65536, sha }));
    await forgeChain(P, 'priv', 4 * MiB, [layer(priv)]);
    const pKey = await forgeChain(P, 'theirs', 4 * MiB, [layer(theirs)]);
    const first = await sync(P);
    expect(first.code, first.stderr).toBe(0);
    await sharer.stop();
    // S holds P's records now (else this test would prove nothing), and serves afresh.
    const sCat = await Catalog.openPeer(resolveHome(S), 'crew', pKey);
    try {
      const v = await sCat.view();
      expect([...v.shares.keys()].sort()).toEqual(['priv', 'theirs']);
      const localIds = await Promise.all(
        ['priv', 'theirs'].map(
          async (vm) => (JSON.parse(await readFile(path.join(S, 'vms', vm, 'snapshots', `${vm}1.json`), 'utf8')) as { content_id: string }).content_id,
        ),
      );
      expect(['priv', 'theirs'].map((vm) => v.snapshots.get(vm)?.[0]?.id)).toEqual(localIds);
    } finally {
      await sCat.close();
    }
    sharer = watch(S);

    // P asks S for all of them, and for blocks that exist nowhere.
    const nowhere = blockIds(randomBytes(512 * 1024));
    const hidden = [...blockIds(priv), ...blockIds(away), ...blockIds(theirs)];
    const res = await probe(P, [...blockIds(pub), ...hidden, ...nowhere]);
    const hex = (l: Buffer[]) => l.map((b) => b.toString('hex')).sort();
    expect(res.received).toBe(8);
    expect(hex(res.missing)).toEqual(hex([...hidden, ...nowhere]));
    expect([res.corrupt.length, res.unanswered.length]).toEqual([0, 0]);

    // What S's crew catalog tells P names pub only, and none of the other blocks.
    const r = await sync(P);
    expect(r.code, r.stderr).toBe(0);
    expect(r.doc.chains.filter((c) => c.peer === 'ws-s').map((c) => c.remote_vm)).toEqual(['pub']);
    const hm = resolveHome(P);
    const peers = await readdir(path.join(syncDir(hm, 'crew'), 'peers'));
    const named = new Set<string>();
    for (const key of peers) {
      const cat = await Catalog.openPeer(hm, 'crew', Buffer.from(key, 'hex'));
      try {
        const v = await cat.view();
        for (const [vm, snaps] of v.snapshots) {
          for (const sn of snaps)
            for (const d of sn.disks)
              for (const it of await cat.mapItems(d.map_start, d.map_count, vm, d.target)) if (it.kind === 'block') named.add(it.sha.toString('hex'));
        }
      } finally {
        await cat.close();
      }
    }
    expect(hex(blockIds(pub)).every((h) => named.has(h))).toBe(true);
    expect(hex(hidden).filter((h) => named.has(h))).toEqual([]);
    await sharer.stop();
    sharer = null;
  });
});
