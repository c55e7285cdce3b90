/**
 * `vm remove --delete-files` on a libvirt VM (issue 17, bug 2): a running domain is refused with
 * DOMAIN_RUNNING and a hint to stop it (deleting the images qemu runs on would destroy the guest's
 * disks), and once stopped every file goes, including the memory state of full snapshots
 * (`<disk>@<snapshot>.mem`); a full snapshot's size counts its memory state. Real libvirtd; fails under CLONEBOX_REQUIRE_LIBVIRT=1 when absent.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseCliError, parseJsonOutput, runCli } from './helpers/cli.js';
import { libvirtSuite, TestDomain, URI, useTestDaemon } from './helpers/libvirt.js';
import { makeTempDir } from './helpers/temp.js';

const { suite } = await libvirtSuite('vm remove --delete-files on libvirt VMs (real daemon)');

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();

  it('refuses while the domain runs, then deletes disks, layers and memory files', async () => {
    const dom = await TestDomain.define(virsh, 'rm');
    const home = path.join(await makeTempDir('clonebox-lvrm-'), 'home');
    const cli = (args: string[]) => runCli(args, { home, timeoutMs: 180_000 });
    const add = await cli(['vm', 'add', 'web', '--libvirt', '--domain', dom.name, '--connect', URI]);
    expect(add.code, add.stderr).toBe(0);
    await virsh.start(dom.name);
    const full = await cli(['snapshot', 'create', 'web', '--name', 'live', '--memory', '--json']);
    expect(full.code, full.stderr).toBe(0);
    const snap = parseJsonOutput<{ type: string; disks: { path: string }[] }>(full);
    expect(snap.type).toBe('full');
    const mem = path.join(path.dirname(dom.disks[0]!.path), `${path.basename(dom.disks[0]!.path, '.qcow2')}@live.mem`);
    expect(await exists(mem)).toBe(true);
    // Its size counts the memory state (it showed 0 B, issue 17).
    const listed = parseJsonOutput<{ name: string; size_bytes: number }[]>(await cli(['snapshot', 'list', 'web', '--json']));
    expect(listed.find((x) => x.name === 'live')!.size_bytes).toBeGreaterThanOrEqual((await stat(mem)).size);
    const current = parseJsonOutput<{ disks: { path: string }[] }>(await cli(['vm', 'show', 'web', '--json'])).disks[0]!.path;
    const files = [current, snap.disks[0]!.path, mem];

    const refused = await cli(['vm', 'remove', 'web', '--delete-files', '--yes', '--json']);
    expect(refused.code).toBe(1);
    const e = parseCliError(refused, true);
    expect(e.code).toBe('DOMAIN_RUNNING');
    expect(refused.stderr).toContain('stop it first');
    for (const f of files) expect(await exists(f), f).toBe(true);
    expect(await virsh.isActive(dom.name)).toBe(true);
    // Still registered: nothing was done.
    expect((await cli(['vm', 'show', 'web'])).code).toBe(0);

    await virsh.destroy(dom.name);
    const removed = await cli(['vm', 'remove', 'web', '--delete-files', '--yes', '--json']);
    expect(removed.code, removed.stderr).toBe(0);
    const doc = parseJsonOutput<{ deleted_files: string[] }>(removed);
    expect(doc.deleted_files.sort()).toEqual([...files].sort());
    for (const f of files) expect(await exists(f), f).toBe(false);
  });
});
