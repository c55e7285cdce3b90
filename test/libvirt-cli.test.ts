/**
 * The libvirt driver through the CLI on a real libvirtd: `vm add --libvirt`, then snapshot commands
 * exactly as a user types them. Skips loudly when no daemon is reachable (fails under
 * CLONEBOX_REQUIRE_LIBVIRT=1).
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import { libvirtSuite, sameContent, snapshotRaw, TestDomain, URI, useTestDaemon } from './helpers/libvirt.js';
import { qemuIo } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

const BASE = 'libvirt VMs through the CLI (real daemon)';
const { suite } = await libvirtSuite(BASE);

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();

  it('restore says that it powers a running domain off, in the question and in the result (issue #17, item 13)', async () => {
    const dom = await TestDomain.define(virsh, 'off');
    const home = path.join(await makeTempDir('clonebox-lvoff-'), 'home');
    const cli = (args: string[]) => runCli(args, { home, timeoutMs: 120_000 });
    expect((await cli(['vm', 'add', 'web', '--libvirt', '--domain', dom.name, '--connect', URI])).code).toBe(0);
    expect((await cli(['snapshot', 'create', 'web', '--name', 's1'])).code).toBe(0);
    const asked = await cli(['snapshot', 'restore', 'web', '--name', 's1']);
    expect(asked.code).toBe(1);
    expect(asked.stderr).toContain('the libvirt domain is powered off first if it runs (its memory state is lost)');
    const r = await cli(['snapshot', 'restore', 'web', '--name', 's1', '--yes']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('restored web to s1\nthe libvirt domain is off now: start it with `virsh start`, or restore with --start to have it started\n');
  });

  it('registers a domain, snapshots it offline, restores it, refuses --memory when stopped, and exports to an identical image-driver VM', async () => {
    const dom = await TestDomain.define(virsh, 'cli');
    const home = path.join(await makeTempDir('clonebox-lvcli-'), 'home');
    const cli = (args: string[]) => runCli(args, { home, timeoutMs: 120_000 });
    const add = await cli(['vm', 'add', 'web', '--libvirt', '--domain', dom.name, '--connect', URI, '--json']);
    expect(add.code, add.stderr).toBe(0);
    const view = parseJsonOutput<{ driver: string; disks: { target: string; path: string }[] }>(add);
    expect(view.driver).toBe('libvirt');
    expect(view.disks.map((d) => d.target)).toEqual(['vda']);
    expect(view.disks[0]!.path).toBe(dom.disks[0]!.path);
    const both = await cli(['vm', 'add', 'x', '--libvirt', '--disk', '/tmp/x.qcow2']);
    expect(both.code).toBe(2);

    await qemuIo(dom.disks[0]!.path, 'write -P 0x31 0 1M');
    const s1 = await cli(['snapshot', 'create', 'web', '--name', 's1', '--json']);
    expect(s1.code, s1.stderr).toBe(0);
    const rec = parseJsonOutput<{ type: string; disks: { path: string }[] }>(s1);
    expect(rec.type).toBe('disk');
    const ref = path.join(dom.dir, 's1.raw');
    await snapshotRaw(rec.disks[0]!.path, ref);
    const mem = await cli(['snapshot', 'create', 'web', '--memory']);
    expect(mem.code).toBe(1);
    expect(mem.stderr).toContain('full snapshot requires a running VM');

    const shown = parseJsonOutput<{ disks: { path: string }[] }>(await cli(['vm', 'show', 'web', '--json']));
    await qemuIo(shown.disks[0]!.path, 'write -P 0x32 0 64k');
    const r = await cli(['snapshot', 'restore', 'web', '--name', 's1', '--yes', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const after = parseJsonOutput<{ disks: { path: string }[] }>(await cli(['vm', 'show', 'web', '--json']));
    const cur = path.join(dom.dir, 'cur.raw');
    await snapshotRaw(after.disks[0]!.path, cur);
    expect(await sameContent(cur, ref)).toBe(true);
    expect((await virsh.snapshotList(dom.name)).length).toBe(0); // no stale libvirt snapshot metadata

    // Exported from libvirt, imported as an image-driver VM elsewhere: identical snapshot.
    const bundle = path.join(dom.dir, 'web.cbx');
    const ex = await cli(['snapshot', 'export', 'web', '--name', 's1', '-o', bundle, '--json']);
    expect(ex.code, ex.stderr).toBe(0);
    const home2 = path.join(path.dirname(home), 'home2');
    const im = await runCli(['snapshot', 'import', 'copy', bundle, '--dir', path.join(path.dirname(home), 'copy'), '--json'], { home: home2 });
    expect(im.code, im.stderr).toBe(0);
    const copy = parseJsonOutput<{ driver: string }>(await runCli(['vm', 'show', 'copy', '--json'], { home: home2 }));
    expect(copy.driver).toBe('image');
    const layer = parseJsonOutput<{ disks: { path: string }[] }>(await runCli(['snapshot', 'show', 'copy', '--name', 's1', '--json'], { home: home2 }))
      .disks[0]!.path;
    expect(await sameContent(layer, ref)).toBe(true);
  });
});
