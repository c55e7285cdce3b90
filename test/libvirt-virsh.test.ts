/**
 * The virsh layer against a REAL libvirtd (scripts/setup-libvirt.sh): domains boot nothing but qemu opens
 * their disks, so live snapshots, block commits and memory state are the real thing.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDomainXml } from '../src/drivers/libvirt/domain-xml.js';
import { Virsh } from '../src/drivers/libvirt/virsh.js';
import type { CloneboxError } from '../src/errors.js';
import { rejectionCode } from './helpers/errors.js';
import { libvirtSuite, qcow2, sameContent, snapshotRaw, TestDomain, URI, useTestDaemon } from './helpers/libvirt.js';
import { bounded } from './helpers/process.js';
import { qemuIo } from './helpers/qemu.js';

const { suite } = await libvirtSuite('libvirt virsh primitives on a real daemon');

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();

  it('maps an unreachable daemon, a missing domain and a bad binary to stable codes', async () => {
    const gone = new Virsh({ uri: 'qemu+unix:///system?socket=/nonexistent/libvirt-sock' });
    expect(await rejectionCode(gone.ping(5000))).toBe('LIBVIRT_UNAVAILABLE');
    const err = await gone.state('web1').catch((e: unknown) => e as CloneboxError);
    expect((err as CloneboxError).code).toBe('LIBVIRT_UNAVAILABLE');
    expect((err as CloneboxError).message).toMatch(/web1/);
    expect((err as CloneboxError).message).not.toMatch(/\n/);

    const missing = 'clonebox-test-no-such-domain';
    const e2 = await virsh.state(missing).catch((e: unknown) => e as CloneboxError);
    expect((e2 as CloneboxError).code).toBe('DOMAIN_NOT_FOUND');
    expect((e2 as CloneboxError).message).toContain(missing);
    expect(await virsh.exists(missing)).toBe(false);

    expect(await rejectionCode(new Virsh({ uri: URI, binary: '/nonexistent/virsh' }).ping())).toBe('LIBVIRT_UNAVAILABLE');
  });

  it('defines, starts, stops and undefines a domain', async () => {
    const t0 = Date.now();
    const d = await TestDomain.define(virsh, 'life');
    expect(await virsh.state(d.name)).toBe('shut off');
    expect(await virsh.isPersistent(d.name)).toBe(true);
    await virsh.start(d.name);
    expect(await virsh.state(d.name)).toBe('running');
    // A start of a running domain is a clear, coded error naming the domain.
    const again = await virsh.start(d.name).catch((e: unknown) => e as CloneboxError);
    expect(['DOMAIN_RUNNING', 'LIBVIRT_ERROR']).toContain((again as CloneboxError).code);
    expect((again as CloneboxError).message).toContain(d.name);
    // No OS, so ACPI shutdown is ignored: bounded wait, then forced.
    expect(await virsh.shutdown(d.name, { timeoutMs: 1500, force: true })).toBe('destroyed');
    expect(await virsh.state(d.name)).toBe('shut off');
    expect(await virsh.ensureStopped(d.name)).toBe(false);
    await d.remove();
    expect(await virsh.exists(d.name)).toBe(false);
    console.log(`define/start/stop/undefine: ${Date.now() - t0} ms`);
  });

  it('takes a live external disk-only atomic snapshot of two disks and moves the domain to the new overlays', async () => {
    const d = await TestDomain.define(virsh, 'live', {
      disks: [
        { target: 'vda', sizeMiB: 64 },
        { target: 'vdb', sizeMiB: 32 },
      ],
    });
    await virsh.start(d.name);
    await d.guestWrite('vda', 'write -P 0x11 0 1M');
    await d.guestWrite('vdb', 'write -P 0x22 64k 128k');
    const overlays = d.disks.map((x) => path.join(d.dir, `${x.target}.s1.qcow2`));
    for (const [i, x] of d.disks.entries()) await qcow2(overlays[i]!, 0, x.path); // relative backing name

    const t0 = Date.now();
    const r = await virsh.createSnapshot(d.name, { name: 's1', disks: d.disks.map((x, i) => ({ target: x.target, file: overlays[i]! })) });
    const ms = Date.now() - t0;
    expect(r.quiesced).toBe(false);
    expect(r.warnings).toEqual([]);

    const live = await virsh.domblklist(d.name);
    expect(live.map((b) => [b.target, b.source])).toEqual([
      ['vda', overlays[0]],
      ['vdb', overlays[1]],
    ]);
    expect(live[0]!.type).toBe('file');
    expect(live[0]!.device).toBe('disk');
    // The persistent definition follows (next start uses the overlays), and libvirt keeps no metadata.
    const inactive = await virsh.domblklist(d.name, { inactive: true });
    expect(inactive.map((b) => b.source)).toEqual(overlays);
    expect(await virsh.snapshotList(d.name)).toEqual([]);
    // The live chain is overlay → original image, and the overlay header keeps our relative name.
    const xml = parseDomainXml(await virsh.dumpXml(d.name));
    expect(xml.disk('vda').backingChain?.[0]?.source).toBe(d.disks[0]!.path);
    // New guest writes land in the overlays; the sealed images keep the snapshot's content.
    const before = path.join(d.dir, 'vda.before.raw');
    await snapshotRaw(d.disks[0]!.path, before);
    await d.guestWrite('vda', 'write -P 0x33 0 64k');
    expect(await sameContent(before, d.disks[0]!.path)).toBe(true);
    expect(await sameContent(before, overlays[0]!)).toBe(false);

    // A name clash with an existing file is refused by libvirt without --reuse-external; with --atomic
    // a failed snapshot changes nothing.
    const bad = await virsh
      .createSnapshot(d.name, {
        name: 's2',
        reuseExternal: false,
        disks: [
          { target: 'vda', file: overlays[0]! },
          { target: 'vdb', file: path.join(d.dir, 'vdb.s2.qcow2') },
        ],
      })
      .catch((e: unknown) => e as CloneboxError);
    expect((bad as CloneboxError).code).toBe('LIBVIRT_ERROR');
    expect((bad as CloneboxError).message).toContain(d.name);
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual(overlays);
    expect(existsSync(path.join(d.dir, 'vdb.s2.qcow2'))).toBe(false);
    console.log(`live disk-only atomic snapshot of 2 disks: ${ms} ms`);
  });

  it('takes a memory snapshot (a libvirt save image) and restores it onto new overlays', async () => {
    const d = await TestDomain.define(virsh, 'mem', {
      disks: [
        { target: 'vda', sizeMiB: 64 },
        { target: 'vdb', sizeMiB: 32 },
      ],
    });
    await virsh.start(d.name);
    await d.guestWrite('vda', 'write -P 0x44 0 256k');
    const overlays = d.disks.map((x) => path.join(d.dir, `${x.target}.m1.qcow2`));
    for (const [i, x] of d.disks.entries()) await qcow2(overlays[i]!, 0, x.path);
    const mem = path.join(d.dir, 'm1.mem');

    const t0 = Date.now();
    await virsh.createSnapshot(d.name, { name: 'm1', memoryFile: mem, disks: d.disks.map((x, i) => ({ target: x.target, file: overlays[i]! })) });
    const snapMs = Date.now() - t0;
    expect(existsSync(mem)).toBe(true);
    expect(statSync(mem).size).toBeGreaterThan(64 * 1024);
    expect(await virsh.state(d.name)).toBe('running');
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual(overlays);
    // The memory image's own XML has the disks as they were at the snapshot: the sealed images.
    const saved = parseDomainXml(await virsh.saveImageXml(mem, d.name));
    expect(saved.disks().map((x) => x.source)).toEqual(d.disks.map((x) => x.path));

    // Changes after the snapshot, then restore: stop, new overlays on the sealed images, persistent
    // definition and memory image XML pointed at them (backingStore dropped: libvirt reads the headers).
    await d.guestWrite('vda', 'write -P 0x55 0 64k');
    await virsh.destroy(d.name);
    const t1 = Date.now();
    const fresh = d.disks.map((x) => path.join(d.dir, `${x.target}.r1.qcow2`));
    for (const [i, x] of d.disks.entries()) await qcow2(fresh[i]!, 0, x.path);
    const persistent = parseDomainXml(await virsh.dumpXml(d.name, { inactive: true, secure: true }));
    const restoreXml = parseDomainXml(await virsh.saveImageXml(mem, d.name));
    for (const [i, x] of d.disks.entries()) {
      persistent.setDiskSource(x.target, fresh[i]!);
      restoreXml.setDiskSource(x.target, fresh[i]!);
    }
    await virsh.define(persistent.toString());
    await virsh.restore(mem, { xml: restoreXml.toString(), running: true, domain: d.name });
    const restoreMs = Date.now() - t1;
    expect(await virsh.state(d.name)).toBe('running');
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual(fresh);
    expect((await virsh.domblklist(d.name, { inactive: true })).map((b) => b.source)).toEqual(fresh);
    const liveChain = parseDomainXml(await virsh.dumpXml(d.name)).disk('vda').backingChain;
    expect(liveChain?.map((b) => b.source)).toEqual([d.disks[0]!.path]);
    for (const [i, x] of d.disks.entries()) expect(await sameContent(fresh[i]!, x.path)).toBe(true);
    expect(await sameContent(fresh[0]!, overlays[0]!)).toBe(false); // the 0x55 write is gone
    // The guest runs on: it writes into the fresh overlay, the sealed image stays as it was.
    await d.guestWrite('vda', 'write -P 0x66 1M 64k');
    expect(await sameContent(fresh[0]!, d.disks[0]!.path)).toBe(false);

    // Restore without starting: memory back but the domain stopped, resuming at the next start
    // (restore --paused, then managed save).
    await virsh.destroy(d.name);
    const again = d.disks.map((x) => path.join(d.dir, `${x.target}.r2.qcow2`));
    for (const [i, x] of d.disks.entries()) await qcow2(again[i]!, 0, x.path);
    const p2 = parseDomainXml(await virsh.dumpXml(d.name, { inactive: true, secure: true }));
    const r2 = parseDomainXml(await virsh.saveImageXml(mem, d.name));
    for (const [i, x] of d.disks.entries()) {
      p2.setDiskSource(x.target, again[i]!);
      r2.setDiskSource(x.target, again[i]!);
    }
    await virsh.define(p2.toString());
    await virsh.restore(mem, { xml: r2.toString(), paused: true, domain: d.name });
    await virsh.managedSave(d.name, { running: true });
    expect(await virsh.state(d.name)).toBe('shut off');
    expect(await virsh.hasManagedSave(d.name)).toBe(true);
    await virsh.start(d.name);
    expect(await virsh.state(d.name)).toBe('running');
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual(again);
    expect(await virsh.hasManagedSave(d.name)).toBe(false);
    console.log(`memory snapshot (64 MiB guest): ${snapMs} ms; restore onto new overlays: ${restoreMs} ms`);
  });

  it('falls back with a warning when --quiesce finds no guest agent (no channel, or channel without agent)', async () => {
    for (const agentChannel of [false, true]) {
      const d = await TestDomain.define(virsh, agentChannel ? 'qch' : 'qno', { agentChannel });
      await virsh.start(d.name);
      expect(await virsh.agentStatus(d.name)).toBe(agentChannel ? 'disconnected' : 'none');
      expect(await virsh.agentPing(d.name, 1)).toBe(false);
      const ov = path.join(d.dir, 'vda.q.qcow2');
      await qcow2(ov, 0, d.disks[0]!.path);
      const r = await virsh.createSnapshot(d.name, { name: 'q', quiesce: true, disks: [{ target: 'vda', file: ov }] });
      expect(r.quiesced).toBe(false);
      expect(r.warnings).toHaveLength(1);
      expect(r.warnings[0]).toMatch(agentChannel ? /guest agent .* not connected/ : /no guest agent channel/);
      expect(r.warnings[0]).toContain(d.name);
      expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual([ov]);
      // What the fallback is for: libvirt itself refuses --quiesce with a coded, one-line error.
      const ov2 = path.join(d.dir, 'vda.q2.qcow2');
      await qcow2(ov2, 0, ov);
      const direct = await virsh
        .run(
          [
            'snapshot-create-as',
            d.name,
            'q2',
            '--disk-only',
            '--atomic',
            '--no-metadata',
            '--reuse-external',
            '--quiesce',
            '--diskspec',
            `vda,snapshot=external,file=${ov2}`,
          ],
          { domain: d.name, what: 'cannot create snapshot' },
        )
        .catch((e: unknown) => e as CloneboxError);
      expect((direct as CloneboxError).code).toBe('GUEST_AGENT_UNAVAILABLE');
      expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual([ov]);
      await d.remove();
    }
  });

  it('block-commits the active overlay of a running domain (--active --pivot) with identical data', async () => {
    const d = await TestDomain.define(virsh, 'commit', {
      disks: [
        { target: 'vda', sizeMiB: 64 },
        { target: 'vdb', sizeMiB: 32 },
      ],
    });
    // Data in the base image before start, then more in a middle layer and in the active overlay.
    await qemuIo(d.disks[0]!.path, 'write -P 0x01 0 2M');
    await virsh.start(d.name);
    const mid = path.join(d.dir, 'vda.mid.qcow2');
    const top = path.join(d.dir, 'vda.top.qcow2');
    await qcow2(mid, 0, d.disks[0]!.path);
    await virsh.createSnapshot(d.name, {
      name: 'mid',
      disks: [
        { target: 'vda', file: mid },
        { target: 'vdb', snapshot: 'no' },
      ],
    });
    await d.guestWrite('vda', 'write -P 0x02 1M 2M');
    await qcow2(top, 0, mid);
    await virsh.createSnapshot(d.name, {
      name: 'top',
      disks: [
        { target: 'vda', file: top },
        { target: 'vdb', snapshot: 'no' },
      ],
    });
    await d.guestWrite('vda', 'write -P 0x03 2560k 1M');
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual([top, d.disks[1]!.path]);

    // Non-active commit: the middle layer merges down into the base, the top is re-pointed (relative).
    const ref1 = path.join(d.dir, 'ref1.raw');
    await snapshotRaw(top, ref1);
    const t0 = Date.now();
    await bounded(virsh.blockCommit(d.name, 'vda', { top: mid, base: d.disks[0]!.path, keepRelative: true, timeoutMs: 60_000 }), 90_000, 'blockcommit');
    const midMs = Date.now() - t0;
    expect(await sameContent(ref1, top)).toBe(true);
    const chain1 = parseDomainXml(await virsh.dumpXml(d.name)).disk('vda').backingChain;
    expect(chain1?.map((b) => b.source)).toEqual([d.disks[0]!.path]);

    // Active commit: everything down into the base, the domain pivots to it.
    await d.guestWrite('vda', 'write -P 0x04 4M 512k');
    const ref2 = path.join(d.dir, 'ref2.raw');
    await snapshotRaw(top, ref2);
    const t1 = Date.now();
    await bounded(virsh.blockCommit(d.name, 'vda', { active: true, timeoutMs: 60_000 }), 90_000, 'blockcommit --active');
    const activeMs = Date.now() - t1;
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual([d.disks[0]!.path, d.disks[1]!.path]);
    expect(await sameContent(ref2, d.disks[0]!.path)).toBe(true);
    expect(await virsh.blockJobInfo(d.name, 'vda')).toBeNull();
    // The guest keeps writing to the pivoted image.
    await d.guestWrite('vda', 'write -P 0x05 0 64k');
    expect(await sameContent(ref2, d.disks[0]!.path)).toBe(false);
    await virsh.destroy(d.name);
    await qemuIo(d.disks[0]!.path, 'read -P 0x05 0 64k');
    await qemuIo(d.disks[0]!.path, 'read -P 0x04 4M 512k');
    console.log(`blockcommit middle layer: ${midMs} ms; active commit + pivot: ${activeMs} ms`);
  });

  it('swaps the disk source of a stopped domain through an XML edit (and its managed save image)', async () => {
    const d = await TestDomain.define(virsh, 'swap');
    await qemuIo(d.disks[0]!.path, 'write -P 0x0a 0 1M');
    const ov = path.join(d.dir, 'vda.next.qcow2');
    await qcow2(ov, 0, d.disks[0]!.path);
    const x = parseDomainXml(await virsh.dumpXml(d.name, { inactive: true, secure: true }));
    x.setDiskSource('vda', ov);
    await virsh.define(x.toString());
    expect((await virsh.domblklist(d.name, { inactive: true })).map((b) => b.source)).toEqual([ov]);
    await virsh.start(d.name);
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual([ov]);
    const live = parseDomainXml(await virsh.dumpXml(d.name)).disk('vda');
    expect(live.backingChain?.map((b) => b.source)).toEqual([d.disks[0]!.path]); // read from the header
    expect(live.format).toBe('qcow2');

    // With a managed save image the XML inside it must be edited too: libvirt 9.0 lets an offline change
    // proceed without touching it, and the next start would resume on the old image.
    await virsh.managedSave(d.name, { running: true });
    const ov2 = path.join(d.dir, 'vda.next2.qcow2');
    await qcow2(ov2, 0, ov);
    const p = parseDomainXml(await virsh.dumpXml(d.name, { inactive: true, secure: true })).setDiskSource('vda', ov2);
    await virsh.define(p.toString());
    const ms = parseDomainXml(await virsh.managedSaveXml(d.name));
    expect(ms.disk('vda').source).toBe(ov); // stale until we fix it
    await virsh.managedSaveDefine(d.name, ms.setDiskSource('vda', ov2).toString(), { running: true });
    await virsh.start(d.name);
    expect(await virsh.state(d.name)).toBe('running');
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual([ov2]);
    expect(
      parseDomainXml(await virsh.dumpXml(d.name))
        .disk('vda')
        .backingChain?.map((b) => b.source),
    ).toEqual([ov, d.disks[0]!.path]);
  });
});
