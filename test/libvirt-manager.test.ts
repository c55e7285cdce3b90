/**
 * The snapshot manager on a libvirt VM, end to end on a REAL libvirtd: create (live, --memory, --quiesce),
 * restore (disk, full + --start), delete with merge while running, and SIGKILL at every journal step of
 * create / restore / delete (CLONEBOX_CRASH_AT=N in a child process running the built dist/), each followed
 * by recovery and checks: the domain runs on exactly the images the VM record names, no libvirt snapshot
 * metadata, every layer passes `qemu-img check`, every snapshot's content equals its reference.
 *
 * Recovery in a new process finds the libvirt step handler through drivers/registry.ts, which the
 * snapshot manager hands to the journal.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDomainXml } from '../src/drivers/libvirt/domain-xml.js';
import { inspectDomain } from '../src/drivers/libvirt/driver.js';
import type { CloneboxError } from '../src/errors.js';
import { libvirtSuite, sameContent, sh, snapshotRaw, TestDomain, URI, useTestDaemon } from './helpers/libvirt.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const DIST = path.join(ROOT, 'dist', 'src');

const BASE = 'snapshot manager on a libvirt VM (real daemon)';
const { suite } = await libvirtSuite(BASE);
/** The child: one manager operation with the built code, killed at journal step N by CLONEBOX_CRASH_AT. */
const CHILD = `
const [home, op, name] = process.argv.slice(1);
const { resolveHome } = await import(${JSON.stringify(path.join(DIST, 'store', 'home.js'))});
const { SnapshotManager } = await import(${JSON.stringify(path.join(DIST, 'snapshots', 'manager.js'))});
const m = new SnapshotManager(resolveHome(home));
if (op === 'create') await m.create('web', { name, memory: true });
if (op === 'restore') await m.restore('web', { name }, { start: true });
if (op === 'delete') await m.delete('web', name, { keepChildren: true });
`;

function child(home: string, op: string, name: string, crashAt: number): 'killed' | 'completed' {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', CHILD, home, op, name], {
    env: { ...process.env, CLONEBOX_CRASH_AT: String(crashAt) },
    encoding: 'utf8',
    timeout: 120_000,
  });
  if (r.signal === 'SIGKILL') return 'killed';
  if (r.status !== 0) throw new Error(`${op} ${name} failed: ${r.stderr}`);
  return 'completed';
}

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();

  it('create / restore / delete-merge on a running domain, and SIGKILL at every journal step', async () => {
    const { resolveHome } = await import('../src/store/home.js');
    const { loadVm, saveVm } = await import('../src/store/registry.js');
    const { SnapshotManager } = await import('../src/snapshots/manager.js');
    const d = await TestDomain.define(virsh, 'mgr', {
      disks: [
        { target: 'vda', sizeMiB: 64 },
        { target: 'vdb', sizeMiB: 32 },
      ],
    });
    const homeDir = path.join(d.dir, 'home');
    const home = resolveHome(homeDir);
    const m = new SnapshotManager(home);
    await virsh.start(d.name);
    const ins = await inspectDomain(d.name, URI);
    await saveVm(home, {
      format: 1,
      name: 'web',
      driver: 'libvirt',
      created_at: new Date().toISOString(),
      disks: ins.disks,
      current: null,
      libvirt: { domain: d.name, uri: URI },
    });
    const refs = new Map<string, string>();
    const ref = async (name: string) => {
      const vm = await loadVm(home, 'web');
      const out = path.join(d.dir, `${name}.raw`);
      await snapshotRaw(vm.disks[0]!.path, out);
      refs.set(name, out);
    };
    const invariants = async (label: string) => {
      const snaps = await m.list('web'); // recovers an interrupted operation first
      const vm = await loadVm(home, 'web');
      const active = await virsh.isActive(d.name);
      const x = parseDomainXml(await virsh.dumpXml(d.name, active ? {} : { inactive: true }));
      expect(
        vm.disks.map((k) => x.disk(k.target).source),
        label,
      ).toEqual(vm.disks.map((k) => k.path));
      expect(await virsh.snapshotList(d.name), label).toEqual([]);
      for (const s of snaps) {
        expect(s.state, label).toBe('ready');
        for (const l of s.disks) await sh('qemu-img', ['check', '-U', l.path]);
        if (refs.has(s.name)) expect(await sameContent(s.disks[0]!.path, refs.get(s.name)!), `${label}: ${s.name}`).toBe(true);
      }
      for (const k of vm.disks) await sh('qemu-img', ['check', '-U', k.path]);
      return { snaps, vm };
    };

    await d.guestWrite('vda', 'write -P 0x11 0 1M');
    await ref('s1');
    await m.create('web', { name: 's1' });
    await d.guestWrite('vda', 'write -P 0x22 512k 1M');
    await ref('s2');
    const s2 = await m.create('web', { name: 's2', memory: true });
    expect(s2.value.type).toBe('full');
    await d.guestWrite('vda', 'write -P 0x33 2M 64k');
    await ref('s3');
    const s3 = await m.create('web', { name: 's3', quiesce: true });
    expect(s3.warnings.join('\n')).toMatch(/not quiesced/);
    await invariants('after creates');

    await m.restore('web', { name: 's1' });
    expect(await virsh.state(d.name)).toBe('shut off');
    let { vm } = await invariants('after restore s1');
    expect(await sameContent(vm.disks[0]!.path, refs.get('s1')!)).toBe(true);
    await m.restore('web', { name: 's2' }, { start: true });
    expect(await virsh.run(['domstate', d.name, '--reason'], { domain: d.name })).toMatch(/running \(restored\)/);
    ({ vm } = await invariants('after restore s2 --start'));
    expect(await sameContent(vm.disks[0]!.path, refs.get('s2')!)).toBe(true);
    await d.guestWrite('vda', 'write -P 0x44 3M 64k');
    await m.delete('web', 's2', { keepChildren: true }); // current snapshot, running: blockpull; s3 re-parented
    await invariants('after delete s2');

    for (let n = 1; n <= 20; n++) {
      await d.guestWrite('vda', `write -P ${n} ${n}M 64k`);
      await ref(`c${n}`);
      const r = child(homeDir, 'create', `c${n}`, n);
      await invariants(`create c${n} crash@${n}`);
      if (r === 'completed') break;
    }
    for (let n = 1; n <= 20; n++) {
      const r = child(homeDir, 'restore', 's1', n);
      await invariants(`restore s1 crash@${n}`);
      if (r === 'completed') break;
    }
    expect(await virsh.isActive(d.name)).toBe(true);
    for (let n = 1; n <= 20; n++) {
      const { snaps, vm: v } = await invariants(`before delete #${n}`);
      const victim = n % 2 ? v.current : snaps.filter((s) => !s.current).at(-1)?.name;
      if (!victim) break;
      if (await virsh.isActive(d.name)) await d.guestWrite('vda', `write -P ${100 + n} ${n}M 4k`);
      const cur = path.join(d.dir, `cur${n}.raw`);
      await snapshotRaw(v.disks[0]!.path, cur);
      child(homeDir, 'delete', victim, n);
      const after = await invariants(`delete ${victim} crash@${n}`);
      if (await virsh.isActive(d.name)) await virsh.flushDisk(d.name, d.deviceOf('vda')); // a block pull wrote it
      expect(await sameContent(after.vm.disks[0]!.path, cur), `current state after delete ${victim}`).toBe(true);
    }
  }, 600_000);

  it('refuses --memory on a stopped domain with the contract message', async () => {
    const { resolveHome } = await import('../src/store/home.js');
    const { saveVm } = await import('../src/store/registry.js');
    const { SnapshotManager } = await import('../src/snapshots/manager.js');
    const d = await TestDomain.define(virsh, 'mgr-off');
    const home = resolveHome(path.join(d.dir, 'home'));
    await saveVm(home, {
      format: 1,
      name: 'off',
      driver: 'libvirt',
      created_at: new Date().toISOString(),
      disks: (await inspectDomain(d.name, URI)).disks,
      current: null,
      libvirt: { domain: d.name, uri: URI },
    });
    const e = await new SnapshotManager(home).create('off', { memory: true }).catch((x: unknown) => x as CloneboxError);
    expect((e as CloneboxError).message).toMatch(/full snapshot requires a running VM/);
    expect(await new SnapshotManager(home).list('off')).toEqual([]);
  });
});
