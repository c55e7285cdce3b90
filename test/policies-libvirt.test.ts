/**
 * `before_operations: [config-change]` on a real libvirtd (issue #13, 3): a domain whose XML changed
 * since the last snapshot gets an auto snapshot at the next clonebox command or schedule run; the disk
 * sources every snapshot moves are not a change. Skips loudly without a daemon (fails under
 * CLONEBOX_REQUIRE_LIBVIRT=1).
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import { libvirtSuite, sh, TestDomain, URI, useTestDaemon } from './helpers/libvirt.js';
import { makeTempDir } from './helpers/temp.js';

const BASE = 'config-change snapshots of libvirt VMs (real daemon)';
const { suite } = await libvirtSuite(BASE);

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();

  it('a changed domain XML is snapshotted once, at the next schedule run or command', async () => {
    const dom = await TestDomain.define(virsh, 'cfgchg');
    const root = await makeTempDir('clonebox-cfgchg-');
    const home = path.join(root, 'home');
    const cli = (args: string[]) => runCli(args, { home, timeoutMs: 120_000 });
    const list = async () => parseJsonOutput<{ name: string; auto_policy: string | null }[]>(await cli(['snapshot', 'list', 'web', '--json']));
    const conf = path.join(root, '.clonebox.yaml');
    await writeFile(
      conf,
      `vm:\n  name: web\n  libvirt: {domain: ${dom.name}, uri: "${URI}"}\n  snapshots:\n    auto_snapshot:\n      before_operations: [config-change]\n`,
    );
    const applied = await cli(['apply', conf, '--json']);
    expect(applied.code, applied.stderr).toBe(0);
    expect(parseJsonOutput<{ registered: boolean }>(applied).registered).toBe(true);
    expect((await cli(['snapshot', 'create', 'web', '--name', 's1'])).code).toBe(0);
    // The snapshot moved the disk onto a new overlay: not a configuration change.
    const quiet = await cli(['schedule', 'run', '--json']);
    expect(quiet.code, quiet.stderr).toBe(0);
    expect((await list()).map((s) => s.name)).toEqual(['s1']);

    await sh('virsh', ['-c', URI, 'setmaxmem', dom.name, '131072', '--config']);
    const run = await cli(['schedule', 'run']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/the configuration of web changed since its last snapshot: took automatic snapshot snap-/);
    const after = await list();
    expect(after.length).toBe(2);
    expect(after.filter((s) => s.auto_policy === 'before-config-change').length).toBe(1);
    expect((await cli(['schedule', 'run'])).stderr).not.toContain('configuration');
    expect((await list()).length).toBe(2);

    // At the next command that changes the VM, too: the auto snapshot comes before the user's.
    await sh('virsh', ['-c', URI, 'setmaxmem', dom.name, '98304', '--config']);
    const s2 = await cli(['snapshot', 'create', 'web', '--name', 's2', '--json']);
    expect(s2.code, s2.stderr).toBe(0);
    expect(s2.stderr).toContain('took automatic snapshot');
    const final = await list();
    expect(final.length).toBe(4);
    expect(final.find((s) => s.name === 's2')!).toBeDefined();
    expect(final.filter((s) => s.auto_policy === 'before-config-change').length).toBe(2);
  });
});
