/**
 * Chain replication between homes on one machine, through the real CLI: a private 3-node DHT on
 * 127.0.0.1 made here (never the public DHT), a sharer running `snapshot sync --watch` as a child
 * process (stopped with SIGTERM), receivers running `snapshot sync --json`. Every process is bounded
 * in time and stopped by the test that started it.
 *
 * Covered: a full pull identical to the source (qemu-img compare of every layer) with its metadata; an
 * incremental pull moving only the new blocks; a local VM of the same name holding another chain left
 * untouched (the pull lands in <vm>.<peer>); a corrupted block served by the sharer detected with
 * nothing registered, then a clean retry; a pull SIGKILLed mid-way resuming without fetching again
 * what it had; three homes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectSameChain } from './helpers/chains.js';
import { CLI_PATH, cb } from './helpers/cli.js';
import { useSyncTestbed } from './helpers/dht.js';
import { run } from './helpers/process.js';
import { qemuIo } from './helpers/qemu.js';

const MiB = 1024 * 1024;
const tb = useSyncTestbed('clonebox-sync-chain-');
const { children, home, ok, json, randomFile, diskOf } = tb;

/** The parts of the CLI's --json documents that these tests read. */
interface DiskDoc {
  target: string;
  path: string;
}
interface SnapshotDoc {
  name: string;
  parent: string | null;
  description: string | null;
  tags: string[];
  created_at: string;
  type: string;
  children: string[];
  disks: DiskDoc[];
}
interface VmDoc {
  name: string;
  current: string | null;
  disks: DiskDoc[];
}
interface ChainDoc {
  vm: string;
  remote_vm: string;
  peer: string;
  snapshots: string[];
  bytes_received: number;
  blocks_fetched: number;
  blocks_reused: number;
  via?: string;
  unavailable?: string[];
}
interface SyncDoc {
  peers: string[];
  chains: ChainDoc[];
  bytes_received: number;
  error?: { code: string; message: string };
}

function watch(h: string): { stop(): Promise<void>; stderr(): string } {
  return tb.watch(h, 'crew');
}

function sync(h: string, timeoutS = 60): Promise<{ code: number; doc: SyncDoc; stderr: string }> {
  // A run that printed nothing gives {}: the assertions on its fields then fail and show it.
  return tb.sync<SyncDoc>(h, 'crew', timeoutS);
}

async function join(h: string, name: string): Promise<void> {
  await ok(h, ['team', 'join', 'crew', '--invite', invite, '--name', name]);
}

let invite = '';
let sharer: ReturnType<typeof watch>;
const A = () => home('a');

describe('snapshot share / sync between homes on a local testnet', () => {
  beforeAll(async () => {
    await ok(A(), ['vm', 'create', 'dev', '--size', '64M']);
    const disk = await diskOf(A(), 'dev');
    await qemuIo(disk, `write -s ${await randomFile('r8', 8 * MiB)} 0 8M`);
    await qemuIo(disk, 'write -P 0x11 16M 4M');
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'base', '--description', 'the base image', '--tags', 'golden,v1']);
    await qemuIo(disk, 'write -P 0x22 32M 2M');
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'tools']);
    invite = (await json<{ invite: string }>(A(), ['team', 'create', 'crew', '--name', 'ws-a'])).invite;
    const shared = await json<{ published: string[] }>(A(), ['snapshot', 'share', 'dev', '--team', 'crew']);
    expect(shared.published).toEqual(['base', 'tools']);
    sharer = watch(A());
  });

  afterAll(async () => {
    await sharer?.stop();
  });

  it('pulls a full chain identical to the source, with its metadata', async () => {
    const B = home('b');
    await join(B, 'ws-b');
    const t0 = Date.now();
    const r = await sync(B);
    expect(r.code, r.stderr).toBe(0);
    expect(r.doc.peers).toEqual(['ws-a']);
    expect(r.doc.chains).toHaveLength(1);
    const c = r.doc.chains[0]!;
    expect(c.vm).toBe('dev');
    expect(c.snapshots).toEqual(['base', 'tools']);
    // 128 random blocks, one 0x11 block (64 copies), one 0x22 block.
    expect(c.blocks_fetched).toBe(130);
    expect(c.bytes_received).toBeGreaterThanOrEqual(8 * MiB);
    expect(c.bytes_received).toBeLessThan(8.5 * MiB);
    expect(r.doc.bytes_received).toBe(c.bytes_received);
    await expectSameChain(A(), 'dev', B, 'dev', { sameTree: true });
    const vm = await json<VmDoc>(B, ['vm', 'show', 'dev']);
    expect(vm.current).toBe('tools');
    // The current state stands on the pulled head.
    expect((await run('qemu-img', ['compare', vm.disks[0]!.path, await diskOf(A(), 'dev')])).code).toBe(0);
    process.stderr.write(`full pull: ${(c.bytes_received / MiB).toFixed(1)} MiB in ${Date.now() - t0} ms (whole command)\n`);
    // Nothing left in the spool.
    expect(await readdir(path.join(B, 'sync', 'partial'))).toEqual([]);
  });

  it('a new snapshot pulls only its new blocks', async () => {
    const B = home('b');
    await sharer.stop();
    await qemuIo(await diskOf(A(), 'dev'), `write -s ${await randomFile('r1', MiB)} 40M 1M`);
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'patch', '--description', 'one more']);
    sharer = watch(A());
    const r = await sync(B);
    expect(r.code, r.stderr).toBe(0);
    expect(r.doc.chains, `sync:\n${r.stderr}\nsharer:\n${sharer.stderr()}`).toHaveLength(1);
    const c = r.doc.chains[0]!;
    expect(c.snapshots).toEqual(['patch']);
    expect(c.blocks_fetched).toBe(16);
    // Random data: its compressed size is its size (stored raw); framing adds a few bytes.
    expect(c.bytes_received).toBeGreaterThanOrEqual(MiB);
    expect(c.bytes_received).toBeLessThanOrEqual(1.05 * MiB);
    await expectSameChain(A(), 'dev', B, 'dev', { sameTree: true });
    expect((await json<VmDoc>(B, ['vm', 'show', 'dev'])).current).toBe('patch');
    // Caught up: a second sync moves nothing.
    const again = await sync(B);
    expect(again.code, again.stderr).toBe(0);
    expect(again.doc.bytes_received).toBe(0);
  });

  it('never touches a local VM of the same name holding another chain: the pull lands in <vm>.<peer>', async () => {
    const C = home('c');
    await join(C, 'ws-c');
    await ok(C, ['vm', 'create', 'dev', '--size', '16M']);
    await qemuIo(await diskOf(C, 'dev'), 'write -P 0x33 0 1M');
    await ok(C, ['snapshot', 'create', 'dev', '--name', 'mine']);
    await qemuIo(await diskOf(C, 'dev'), 'write -P 0x44 1M 1M');
    const before = {
      vm: await readFile(path.join(C, 'vms', 'dev', 'vm.json'), 'utf8'),
      snaps: await json(C, ['snapshot', 'list', 'dev']),
      disk: createHash('sha256')
        .update(await readFile(await diskOf(C, 'dev')))
        .digest('hex'),
    };
    const r = await sync(C);
    expect(r.code, r.stderr).toBe(0);
    expect(r.doc.chains.map((c) => c.vm)).toEqual(['dev.ws-a']);
    expect(await readFile(path.join(C, 'vms', 'dev', 'vm.json'), 'utf8')).toBe(before.vm);
    expect(await json(C, ['snapshot', 'list', 'dev'])).toEqual(before.snaps);
    expect(
      createHash('sha256')
        .update(await readFile(await diskOf(C, 'dev')))
        .digest('hex'),
    ).toBe(before.disk);
    await expectSameChain(A(), 'dev', C, 'dev.ws-a', { sameTree: true });
  });

  it('detects a corrupted block served by a peer: nothing registered, and a later sync succeeds', async () => {
    const D = home('d');
    await join(D, 'ws-d');
    // Rot one byte of the sharer's 'patch' layer, inside its data.
    const layer = (await json<SnapshotDoc>(A(), ['snapshot', 'show', 'dev', '--name', 'patch'])).disks[0]!.path;
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', layer])).stdout) as {
      start: number;
      data: boolean;
      depth: number;
      offset?: number;
    }[];
    const ext = map.find((e) => e.data && e.depth === 0 && e.offset !== undefined)!;
    const at = ext.offset! + 1000;
    const fh = await open(layer, 'r+');
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, at);
    await fh.write(Buffer.from([one[0]! ^ 0xff]), 0, 1, at);
    try {
      const r = await sync(D);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/corrupt/);
      expect(r.doc.error?.code).toBe('SYNC_CHAIN');
      expect(await json(D, ['vm', 'list'])).toEqual([]);
      const disks = await readdir(path.join(D, 'disks')).catch(() => []);
      expect(disks).toEqual([]);
    } finally {
      await fh.write(one, 0, 1, at);
      await fh.close();
    }
    const r2 = await sync(D);
    expect(r2.code, r2.stderr).toBe(0);
    // What arrived the first time was kept: only the blocks it lacked came again.
    expect(r2.doc.chains[0]!.blocks_reused).toBeGreaterThan(0);
    await expectSameChain(A(), 'dev', D, 'dev', { sameTree: true });
  });

  it('a pull killed mid-way resumes without fetching again what it had', async () => {
    await sharer.stop();
    await ok(A(), ['vm', 'create', 'big', '--size', '128M']);
    await qemuIo(await diskOf(A(), 'big'), `write -s ${await randomFile('r64', 64 * MiB)} 0 64M`);
    await ok(A(), ['snapshot', 'create', 'big', '--name', 'one']);
    await ok(A(), ['snapshot', 'share', 'big', '--team', 'crew']);
    sharer = watch(A());
    const E = home('e');
    await join(E, 'ws-e');
    const child = spawn(process.execPath, [CLI_PATH, '--home', E, 'snapshot', 'sync', '--team', 'crew', '--bootstrap', tb.bs, '--timeout', '60', '--json'], {
      stdio: 'ignore',
    });
    children.add(child);
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    const idx = path.join(E, 'sync', 'partial', 'placed.idx');
    const t0 = Date.now();
    let killedAt = 0;
    while (Date.now() - t0 < 60_000) {
      // placed.idx: one 64-byte entry per 64 KiB block durably placed in the layer being written
      const size =
        ((await stat(idx).then(
          (s) => s.size,
          () => 0,
        )) /
          64) *
        64 *
        1024;
      if (size >= 28 * MiB) {
        // dev's ~9 MiB come first (E pulls every shared chain), then big's
        child.kill('SIGKILL');
        killedAt = size;
        break;
      }
      if (child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    await exited;
    children.delete(child);
    expect(killedAt, 'the pull ended before it could be killed').toBeGreaterThan(0);
    const indexed = Math.floor(
      (await stat(idx).then(
        (s) => s.size,
        () => 0,
      )) / 44,
    );
    expect(indexed).toBeGreaterThan(0);
    expect((await json<VmDoc[]>(E, ['vm', 'list'])).map((v) => v.name)).not.toContain('big');
    // The layer it was writing is listed for the next sync to remove.
    const listed = (await readFile(path.join(E, 'sync', 'pull-temps.list'), 'utf8')).split('\n').filter((l) => l.includes('.sync-'));
    expect(listed.length).toBeGreaterThan(0);
    const r = await sync(E);
    expect(r.code, r.stderr).toBe(0);
    for (const f of listed)
      expect(
        await stat(f).then(
          () => 'left behind',
          () => 'removed',
        ),
        f,
      ).toBe('removed');
    expect(await readFile(path.join(E, 'sync', 'pull-temps.list'), 'utf8')).toBe('');
    const big = r.doc.chains.find((c) => c.vm === 'big')!;
    // E has no other copy of big's random blocks: what it reused is what the killed run kept.
    const spooled = big.blocks_reused;
    expect(spooled).toBeGreaterThan(0);
    expect(big.blocks_fetched + big.blocks_reused).toBe(1024);
    // Total: what the first run kept plus what the second received stays about one full pull.
    const total = spooled * 64 * 1024 + big.bytes_received;
    expect(total).toBeLessThanOrEqual(64 * MiB * 1.03);
    expect(big.bytes_received).toBeLessThanOrEqual((1024 - spooled) * 64 * 1024 * 1.01 + 64 * 1024);
    process.stderr.write(
      `resume: killed with ${(killedAt / MiB).toFixed(1)} MiB spooled, ${spooled} of big's blocks kept; second run received ${(big.bytes_received / MiB).toFixed(1)} MiB\n`,
    );
    await expectSameChain(A(), 'big', E, 'big', { sameTree: true });
  });

  it("three homes: each pulls the others' shared chains, reusing blocks it already has", async () => {
    const B = home('b');
    // B shares a VM of its own whose base holds the same 8 MiB as A's dev (blocks F will have from dev).
    await ok(B, ['vm', 'create', 'tools', '--size', '32M']);
    await qemuIo(await diskOf(B, 'tools'), `write -s ${path.join(tb.root, 'r8')} 0 8M`);
    await ok(B, ['snapshot', 'create', 'tools', '--name', 't1']);
    await ok(B, ['snapshot', 'share', 'tools', '--team', 'crew']);
    const second = watch(B);
    try {
      const F = home('f');
      await join(F, 'ws-f');
      // Wait for both sharers to be reachable: sync retries until both chains are in.
      let got: ChainDoc[] = [];
      for (let i = 0; i < 3 && got.length < 3; i++) {
        const r = await sync(F);
        expect(r.code, r.stderr).toBe(0);
        got = [...got, ...r.doc.chains.filter((c) => c.snapshots.length)];
      }
      expect(got.map((c) => c.vm).sort()).toEqual(['big', 'dev', 'tools']);
      await expectSameChain(A(), 'dev', F, 'dev', { sameTree: true });
      await expectSameChain(B, 'tools', F, 'tools', { sameTree: true });
      // dev and tools share 128 blocks: whichever came second reused them.
      const dev = got.find((c) => c.vm === 'dev')!;
      const tools = got.find((c) => c.vm === 'tools')!;
      expect(dev.blocks_reused + tools.blocks_reused).toBeGreaterThanOrEqual(128);
    } finally {
      await second.stop();
    }
  });

  it('writes the layers without holding the VM: it stays usable while a pull extends it, and a change there fails the pull cleanly', async () => {
    const G = home('g');
    await join(G, 'ws-g');
    const first = await sync(G);
    expect(first.code, first.stderr).toBe(0);
    await sharer.stop();
    await qemuIo(await diskOf(A(), 'dev'), `write -s ${await randomFile('r32', 32 * MiB)} 0 32M`);
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'large']);
    sharer = watch(A());
    const devDir = path.dirname(await diskOf(G, 'dev'));
    const before = (await json<SnapshotDoc[]>(G, ['snapshot', 'list', 'dev'])).map((x) => x.name);

    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.CLONEBOX_HOME;
    const child = spawn(process.execPath, [CLI_PATH, '--home', G, 'snapshot', 'sync', '--team', 'crew', '--bootstrap', tb.bs, '--timeout', '60', '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    children.add(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => {
      out += d;
    });
    child.stderr!.on('data', (d) => {
      err += d;
    });
    const exited = new Promise<number | null>((r) =>
      child.once('exit', (code) => {
        children.delete(child);
        r(code);
      }),
    );
    // Wait for the new layer to be on its way (a hidden temporary beside dev's disk), then freeze the pull.
    const t0 = Date.now();
    let writing = false;
    while (!writing && child.exitCode === null && Date.now() - t0 < 60_000) {
      writing = (await readdir(devDir)).some((f) => f.startsWith('.') && f.includes('.sync-'));
      if (!writing) await new Promise((r) => setTimeout(r, 5));
    }
    expect(writing, `the pull never wrote a layer: ${err}`).toBe(true);
    child.kill('SIGSTOP');
    let mine: Awaited<ReturnType<typeof cb>>;
    try {
      // Before: VM_BUSY after the lock wait, as the pull held dev's lock for the whole transfer.
      mine = await cb(G, ['snapshot', 'create', 'dev', '--name', 'mine'], 30_000);
    } finally {
      child.kill('SIGCONT');
    }
    expect(mine.code, mine.stderr).toBe(0);
    expect(await exited).toBe(1);
    const doc = JSON.parse(out);
    expect(doc.error.code, err).toBe('SYNC_CHAIN');
    expect(doc.error.message).toMatch(/VM dev changed while pulling/);
    // Nothing half-written, nothing of the local VM lost.
    expect((await readdir(devDir)).filter((f) => f.startsWith('.'))).toEqual([]);
    expect(await readFile(path.join(G, 'sync', 'pull-temps.list'), 'utf8')).toBe('');
    expect((await json<SnapshotDoc[]>(G, ['snapshot', 'list', 'dev'])).map((x) => x.name).sort()).toEqual([...before, 'mine'].sort());
    // dev now holds a chain of its own, so the next sync lands in dev.ws-a, and fetches nothing again:
    // the blocks the failed pull received wait in the spool.
    const again = await sync(G);
    expect(again.code, again.stderr).toBe(0);
    const c = again.doc.chains.find((x) => x.remote_vm === 'dev')!;
    expect(c.vm).toBe('dev.ws-a');
    expect(c.blocks_fetched).toBe(0);
    await expectSameChain(A(), 'dev', G, 'dev.ws-a', { sameTree: true });
  });

  it('a teammate who pulled a chain serves it on, catalog included, while its author is offline', async () => {
    const B = home('b');
    const D = home('d');
    await sharer.stop();
    await qemuIo(await diskOf(A(), 'dev'), `write -s ${await randomFile('r2', 2 * MiB)} 48M 2M`);
    await ok(A(), ['snapshot', 'create', 'dev', '--name', 'relay']);
    await ok(A(), ['vm', 'create', 'solo', '--size', '8M']);
    await qemuIo(await diskOf(A(), 'solo'), `write -s ${await randomFile('r1s', MiB)} 0 1M`);
    await ok(A(), ['snapshot', 'create', 'solo', '--name', 's1']);
    await ok(A(), ['snapshot', 'share', 'solo', '--team', 'crew']);
    sharer = watch(A());
    // B, online with A, takes the new snapshots (and solo, which it then drops); then A goes away.
    const rb = await sync(B);
    expect(rb.code, rb.stderr).toBe(0);
    expect(rb.doc.chains.find((x) => x.remote_vm === 'dev')!.snapshots).toEqual(['large', 'relay']);
    expect(rb.doc.chains.find((x) => x.remote_vm === 'solo')!.snapshots).toEqual(['s1']);
    await ok(B, ['vm', 'remove', 'solo', '--delete-files', '--yes']);
    await sharer.stop();
    const relay = watch(B);
    try {
      // D met A once (it pulled dev before) but A is offline: D reaches only B.
      const r = await sync(D);
      expect(r.code, r.stderr).toBe(0);
      expect(r.doc.peers).toEqual(['ws-b']);
      const c = r.doc.chains.find((x) => x.remote_vm === 'dev')!;
      expect(c, r.stderr).toBeDefined();
      expect(c.peer).toBe('ws-a');
      expect(c.via).toBe('ws-b');
      expect(c.vm).toBe('dev');
      expect(c.snapshots).toEqual(['large', 'relay']);
      expect(c.blocks_fetched).toBe((32 + 2) * 16); // random data: every block is new
      await expectSameChain(A(), 'dev', D, 'dev', { sameTree: true });
      // solo is in A's catalog as B passed it on, but nobody online holds its blocks: it waits.
      expect(r.stderr).toMatch(/solo from ws-a: 16 block\(s\) are on no teammate online; it waits for ws-a/);
      expect(r.doc.chains.some((x) => x.remote_vm === 'solo')).toBe(false);
      expect((await json<VmDoc[]>(D, ['vm', 'list'])).map((v) => v.name)).not.toContain('solo');

      // H never met A: B hands on A's signed catalog card, so H can follow A's catalog too. Until H
      // meets A, A's name carries its key's prefix (a card cannot claim a plain name).
      const H = home('h');
      await join(H, 'ws-h');
      const rh = await sync(H);
      expect(rh.code, rh.stderr).toBe(0);
      expect(rh.doc.peers).toEqual(['ws-b']);
      expect(rh.stderr).toMatch(/new member on team crew: ws-a-[0-9a-f]{8} \([0-9a-f]{8}\), known through ws-b/);
      const h = rh.doc.chains.find((x) => x.remote_vm === 'dev')!;
      expect(h, rh.stderr).toBeDefined();
      expect(h.peer).toMatch(/^ws-a-[0-9a-f]{8}$/);
      expect([h.via, h.vm]).toEqual(['ws-b', 'dev']);
      await expectSameChain(A(), 'dev', H, 'dev', { sameTree: true });
      const members = (await json<{ members: { name: string; via?: string }[] }>(H, ['team', 'show', 'crew'])).members;
      expect(members.find((m) => m.name === h.peer)).toMatchObject({ via: 'ws-b' });
    } finally {
      await relay.stop();
    }
  });

  it('a snapshot its sharer deleted after sharing it is left out (with what stands on it), the rest pulled, and the sync succeeds', async () => {
    await sharer.stop();
    await ok(A(), ['vm', 'create', 'prn', '--size', '8M']);
    const disk = await diskOf(A(), 'prn');
    await qemuIo(disk, 'write -P 0x51 0 1M');
    await ok(A(), ['snapshot', 'create', 'prn', '--name', 's1']);
    await qemuIo(disk, `write -s ${await randomFile('rp2', MiB)} 1M 1M`);
    await ok(A(), ['snapshot', 'create', 'prn', '--name', 's2']);
    await qemuIo(disk, `write -s ${await randomFile('rp3', MiB)} 1M 1M`); // s3 overwrites all of s2's data
    await ok(A(), ['snapshot', 'create', 'prn', '--name', 's3']);
    await ok(A(), ['snapshot', 'share', 'prn', '--team', 'crew']);
    // Published, then deleted (as a retention policy prunes): s3 is merged onto s1, s2's blocks are gone.
    await ok(A(), ['snapshot', 'delete', 'prn', '--name', 's2', '--keep-children']);
    sharer = watch(A());
    const J = home('j');
    await join(J, 'ws-j');
    const r = await sync(J);
    expect(r.code, r.stderr).toBe(0);
    const c = r.doc.chains.find((x) => x.remote_vm === 'prn')!;
    expect(c, r.stderr).toBeDefined();
    expect(c.snapshots).toEqual(['s1']);
    expect(c.unavailable).toEqual(['s2', 's3']);
    expect(r.stderr).toMatch(/prn from ws-a: s2, s3 left out: ws-a no longer has some of their blocks/);
    const s1 = (await json<SnapshotDoc[]>(J, ['snapshot', 'list', 'prn'])).map((x) => x.name);
    expect(s1).toEqual(['s1']);
    const a1 = (await json<SnapshotDoc>(A(), ['snapshot', 'show', 'prn', '--name', 's1'])).disks[0]!.path;
    const j1 = (await json<SnapshotDoc>(J, ['snapshot', 'show', 'prn', '--name', 's1'])).disks[0]!.path;
    expect((await run('qemu-img', ['compare', a1, j1])).code).toBe(0);
  });
});
