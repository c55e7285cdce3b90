/**
 * The libvirt driver (src/drivers/libvirt/driver.ts) against a REAL libvirtd, driven the way the snapshot
 * manager drives it: prepare (new files only), then the returned actions in order, which this test runs
 * itself (renames, unlinks, and the driver's libvirt steps), each step twice to show it is idempotent
 * (a crash after a step took effect re-runs it).
 */
import { existsSync } from 'node:fs';
import { rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDomainXml } from '../src/drivers/libvirt/domain-xml.js';
import { inspectDomain, LibvirtDriver, type LibvirtStep, performLibvirtStep } from '../src/drivers/libvirt/driver.js';
import type { CloneboxError } from '../src/errors.js';
import type { Action, Journal } from '../src/store/journal.js';
import type { VmRecord } from '../src/store/registry.js';
import type { SnapshotRecord } from '../src/store/snapshots.js';
import { libvirtSuite, qcow2, sameContent, sh, snapshotRaw, TestDomain, URI, useTestDaemon } from './helpers/libvirt.js';

const { suite } = await libvirtSuite('libvirt driver on a real daemon');

/** Stands in for the journal during prepare: records the files announced. */
function fakeJournal(): Journal & { created: string[] } {
  const created: string[] = [];
  return { created, willCreate: async (...f: string[]) => void created.push(...f) } as unknown as Journal & { created: string[] };
}

/** Runs committed actions as the journal does, every one twice (idempotence after a crash). */
async function commit(actions: Action[]): Promise<void> {
  for (const a of actions) {
    for (let pass = 0; pass < 2; pass++) {
      const x = a as Exclude<Action, { do: 'driver' }> | { do: 'driver'; driver: string; step: LibvirtStep };
      if (x.do === 'driver') await performLibvirtStep(x.step);
      else if (x.do === 'rename')
        await rename(x.from, x.to).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'ENOENT' || !existsSync(x.to)) throw e;
        });
      else if (x.do === 'unlink')
        await unlink(x.path).catch((e: NodeJS.ErrnoException) => {
          if (e.code !== 'ENOENT') throw e;
        });
      else throw new Error(`unexpected action ${x.do}`);
    }
  }
}

async function check(file: string): Promise<void> {
  await sh('qemu-img', ['check', '-U', file]);
}

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();
  const driver = new LibvirtDriver();

  it('registers only persistent domains with qcow2 disks and no libvirt snapshot metadata', async () => {
    const d = await TestDomain.define(virsh, 'reg', {
      disks: [
        { target: 'vda', sizeMiB: 16 },
        { target: 'vdb', sizeMiB: 16 },
      ],
    });
    const r = await inspectDomain(d.name, URI);
    expect(r.disks).toEqual(d.disks.map((k) => ({ target: k.target, path: k.path })));
    expect(((await inspectDomain('clonebox-test-none', URI).catch((e: unknown) => e as CloneboxError)) as CloneboxError).code).toBe('DOMAIN_NOT_FOUND');
    // libvirt metadata (a snapshot taken with plain virsh) would go stale under clonebox: refused.
    const ov = path.join(d.dir, 'vda.meta.qcow2');
    await qcow2(ov, 0, d.disks[0]!.path);
    await virsh.run([
      'snapshot-create-as',
      d.name,
      'outside',
      '--disk-only',
      '--reuse-external',
      '--diskspec',
      `vda,file=${ov}`,
      '--diskspec',
      'vdb,snapshot=no',
    ]);
    const e = await inspectDomain(d.name, URI).catch((x: unknown) => x as CloneboxError);
    expect((e as CloneboxError).code).toBe('LIBVIRT_UNSUPPORTED');
    expect((e as CloneboxError).message).toMatch(/outside/);
    await d.remove();
  });

  it('create (live, memory, quiesce fallback, offline), restore (disk, full + start), delete-merge (running, stopped)', async () => {
    const timings: Record<string, number> = {};
    const time = async <T>(label: string, fn: () => Promise<T>): Promise<T> => {
      const t0 = Date.now();
      try {
        return await fn();
      } finally {
        timings[label] = Date.now() - t0;
      }
    };
    const d = await TestDomain.define(virsh, 'drv', {
      disks: [
        { target: 'vda', sizeMiB: 64 },
        { target: 'vdb', sizeMiB: 32 },
      ],
    });
    let vm: VmRecord = {
      format: 1,
      name: 'web',
      driver: 'libvirt',
      created_at: new Date().toISOString(),
      current: null,
      disks: (await inspectDomain(d.name, URI)).disks,
      libvirt: { domain: d.name, uri: URI },
    };
    const snaps: SnapshotRecord[] = [];
    const raws = new Map<string, string>(); // snapshot → raw copy of vda at that point
    const take = async (name: string, o: { memory?: boolean; quiesce?: boolean } = {}) => {
      const j = fakeJournal();
      const p = await driver.prepareSnapshot(vm, name, { memory: Boolean(o.memory), quiesce: Boolean(o.quiesce) }, j);
      expect(j.created).toEqual([...p.disks.map((k) => k.path), ...(p.memoryPath ? [p.memoryPath] : [])]);
      await commit(p.actions);
      const rec: SnapshotRecord = {
        name,
        vm_name: vm.name,
        type: p.type,
        state: 'ready',
        created_at: new Date().toISOString(),
        description: null,
        parent: vm.current,
        tags: [],
        auto_created: false,
        auto_policy: null,
        expires_at: null,
        disks: p.layers,
        memory_path: p.memoryPath,
        size_bytes: 0,
      };
      snaps.push(rec);
      vm = { ...vm, current: name, disks: p.disks };
      return { rec, warnings: p.warnings };
    };
    const sources = async (inactive = false) => (await virsh.domblklist(d.name, { inactive })).map((b) => b.source);

    await virsh.start(d.name);
    await d.guestWrite('vda', 'write -P 0xa1 0 1M');
    await d.guestWrite('vdb', 'write -P 0xb1 0 64k');

    // live disk snapshot: the domain moves to new overlays; the layers are the images it was on
    const s1 = await time('create live', () => take('s1'));
    expect(s1.rec.type).toBe('disk');
    expect(s1.rec.disks).toEqual(d.disks.map((k) => ({ target: k.target, path: k.path })));
    expect(await sources()).toEqual(vm.disks.map((k) => k.path));
    expect(await sources(true)).toEqual(vm.disks.map((k) => k.path));
    expect(vm.disks[0]!.path).toBe(path.join(d.dir, 'vda~s1.qcow2'));
    expect(await virsh.snapshotList(d.name)).toEqual([]);
    raws.set('s1', path.join(d.dir, 's1.raw'));
    await snapshotRaw(s1.rec.disks[0]!.path, raws.get('s1')!);

    // full snapshot: memory file, type full
    await d.guestWrite('vda', 'write -P 0xa2 512k 1M');
    const s2 = await time('create full', () => take('s2', { memory: true }));
    expect(s2.rec.type).toBe('full');
    expect(s2.rec.memory_path && existsSync(s2.rec.memory_path)).toBe(true);
    expect(await virsh.state(d.name)).toBe('running');
    raws.set('s2', path.join(d.dir, 's2.raw'));
    await snapshotRaw(s2.rec.disks[0]!.path, raws.get('s2')!);

    // quiesce without an agent: warning, snapshot taken
    await d.guestWrite('vda', 'write -P 0xa3 2M 64k');
    const s3 = await time('create quiesce fallback', () => take('s3', { quiesce: true }));
    expect(s3.warnings).toHaveLength(1);
    expect(s3.warnings[0]).toMatch(/no guest agent channel .* not quiesced/);
    expect(await sources()).toEqual(vm.disks.map((k) => k.path));
    await d.guestWrite('vda', 'write -P 0xa4 3M 64k');

    // restore of a disk snapshot: domain stopped on new overlays over s1's layers; identical content
    const before = vm.disks.map((k) => k.path);
    let j = fakeJournal();
    const r1 = await driver.prepareRestore(vm, s1.rec, j);
    await time('restore disk', () => commit(r1.actions));
    vm = { ...vm, current: 's1', disks: r1.disks };
    expect(await virsh.state(d.name)).toBe('shut off');
    expect(await sources(true)).toEqual(r1.disks.map((k) => k.path));
    for (const [i, k] of r1.disks.entries()) expect(await sameContent(k.path, s1.rec.disks[i]!.path)).toBe(true);
    expect(await sameContent(r1.disks[0]!.path, raws.get('s1')!)).toBe(true);
    for (const p of before) expect(existsSync(p)).toBe(false); // the discarded current state
    expect(await virsh.hasManagedSave(d.name)).toBe(false);

    // restore of a full snapshot, then start: running, memory back, on s2's content
    j = fakeJournal();
    const r2 = await driver.prepareRestore(vm, s2.rec, j);
    await time('restore full', () => commit(r2.actions));
    vm = { ...vm, current: 's2', disks: r2.disks };
    expect(await virsh.state(d.name)).toBe('shut off');
    expect(await virsh.hasManagedSave(d.name)).toBe(true);
    await time('start (resume memory)', () => driver.start(vm));
    expect(await virsh.state(d.name)).toBe('running');
    expect(await sources()).toEqual(r2.disks.map((k) => k.path));
    const st = await virsh.run(['domstate', d.name, '--reason'], { domain: d.name });
    expect(st).toMatch(/running \(restored\)/);
    expect(await sameContent(r2.disks[0]!.path, raws.get('s2')!)).toBe(true);
    for (const [i, k] of r2.disks.entries()) expect(await sameContent(k.path, s2.rec.disks[i]!.path)).toBe(true);

    // delete s2 (the current snapshot) while running: block pull onto s1's layers, content unchanged
    await d.guestWrite('vda', 'write -P 0xa5 4M 128k');
    const cur = path.join(d.dir, 'cur.raw');
    await snapshotRaw(vm.disks[0]!.path, cur);
    j = fakeJournal();
    const newBase = new Map(vm.disks.map((k) => [k.target, s1.rec.disks.find((l) => l.target === k.target)!.path] as [string, string]));
    const m1 = await driver.prepareRebaseCurrent(vm, newBase, j);
    expect(j.created).toEqual([]); // running: nothing to prepare, qemu does the work
    await time('delete current, running (blockpull)', () =>
      commit([...m1.actions, ...s2.rec.disks.map((l) => ({ do: 'unlink', path: l.path }) as Action), { do: 'unlink', path: s2.rec.memory_path! }]),
    );
    vm = { ...vm, current: 's1', disks: m1.disks };
    const live = parseDomainXml(await virsh.dumpXml(d.name));
    for (const k of vm.disks) expect(live.disk(k.target).backingChain?.[0]?.source).toBe(newBase.get(k.target));
    await virsh.flushDisk(d.name, d.deviceOf('vda'));
    expect(await sameContent(vm.disks[0]!.path, cur)).toBe(true);
    await d.guestWrite('vda', 'write -P 0xa6 5M 64k'); // still writable after the pull

    // offline: snapshot of the stopped domain, then delete it again with the qcow2 engine
    await virsh.destroy(d.name);
    for (const k of vm.disks) await check(k.path);
    const s4 = await time('create offline', () => take('s4'));
    expect(await sources(true)).toEqual(vm.disks.map((k) => k.path));
    expect(parseDomainXml(await virsh.dumpXml(d.name, { inactive: true })).disk('vda').backingChain).toBeNull();
    const off = path.join(d.dir, 'off.raw');
    await snapshotRaw(vm.disks[0]!.path, off);
    j = fakeJournal();
    const m2 = await driver.prepareRebaseCurrent(vm, new Map(vm.disks.map((k) => [k.target, newBase.get(k.target)!] as [string, string])), j);
    expect(j.created).toHaveLength(2);
    await time('delete current, stopped (qcow2 engine)', () => commit([...m2.actions, ...s4.rec.disks.map((l) => ({ do: 'unlink', path: l.path }) as Action)]));
    vm = { ...vm, current: 's1', disks: m2.disks };
    expect(await sameContent(vm.disks[0]!.path, off)).toBe(true);
    for (const k of vm.disks) await check(k.path);
    await driver.start(vm);
    const chain = parseDomainXml(await virsh.dumpXml(d.name)).disk('vda').backingChain;
    expect(chain?.map((b) => b.source)).toEqual([s1.rec.disks[0]!.path]);
    expect(await virsh.snapshotList(d.name)).toEqual([]);

    // --memory on a stopped domain: the contract's error
    await virsh.destroy(d.name);
    const e = await driver.prepareSnapshot(vm, 'nope', { memory: true, quiesce: false }, fakeJournal()).catch((x: unknown) => x as CloneboxError);
    expect((e as CloneboxError).code).toBe('VM_NOT_RUNNING');
    expect((e as CloneboxError).message).toBe('full snapshot requires a running VM, web');

    // the domain changed behind clonebox's back: refused, nothing created
    const other = path.join(d.dir, 'elsewhere.qcow2');
    await qcow2(other, 64);
    await virsh.define(
      parseDomainXml(await virsh.dumpXml(d.name, { inactive: true }))
        .setDiskSource('vda', other)
        .toString(),
    );
    const jj = fakeJournal();
    const e2 = await driver.prepareSnapshot(vm, 's5', { memory: false, quiesce: false }, jj).catch((x: unknown) => x as CloneboxError);
    expect((e2 as CloneboxError).code).toBe('DOMAIN_CHANGED');
    expect(jj.created).toEqual([]);
    console.log(`libvirt driver timings (ms): ${JSON.stringify(timings)}`);
  });

  it('keeps a managed save image in step with an offline snapshot', async () => {
    const d = await TestDomain.define(virsh, 'msave');
    let vm: VmRecord = {
      format: 1,
      name: 'ms',
      driver: 'libvirt',
      created_at: new Date().toISOString(),
      current: null,
      disks: [{ target: 'vda', path: d.disks[0]!.path }],
      libvirt: { domain: d.name, uri: URI },
    };
    await virsh.start(d.name);
    await d.guestWrite('vda', 'write -P 0x77 0 64k');
    await virsh.managedSave(d.name, { running: true });
    const p = await driver.prepareSnapshot(vm, 'off', { memory: false, quiesce: false }, fakeJournal());
    await commit(p.actions);
    vm = { ...vm, disks: p.disks };
    expect(parseDomainXml(await virsh.managedSaveXml(d.name)).disk('vda').source).toBe(p.disks[0]!.path);
    await driver.start(vm);
    expect(await virsh.run(['domstate', d.name, '--reason'], { domain: d.name })).toMatch(/running \(restored\)/);
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual([p.disks[0]!.path]);
  });
});
