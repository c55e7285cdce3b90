/**
 * Content ids survive merges: after `delete --keep-children` rewrites a child's layer, a `--since`
 * bundle based on that child still imports into a workstation that got the chain before the merge.
 */

import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import { qemuCompare, qemuIo } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

describe('content ids across merges', () => {
  it('a --since bundle on a merged base imports where the unmerged chain was imported', async () => {
    const root = await makeTempDir('clonebox-ids-');
    const a = path.join(root, 'a');
    const b = path.join(root, 'b');
    const cli = async (home: string, args: string[]) => {
      const r = await runCli(args, { home });
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      return r;
    };
    await cli(a, ['vm', 'create', 'v', '--size', '32M', '--dir', path.join(root, 'disks')]);
    const disk = path.join(root, 'disks', 'v.qcow2');
    for (const [snap, io] of [
      ['s1', 'write -P 1 0 2M'],
      ['s2', 'write -P 2 1M 2M'],
      ['s3', 'write -P 3 4M 1M'],
    ] as const) {
      await qemuIo(disk, [io]);
      await cli(a, ['snapshot', 'create', 'v', '--name', snap]);
    }
    const full = path.join(root, 'full.cbx');
    await cli(a, ['snapshot', 'export', 'v', '-o', full]);
    await cli(b, ['snapshot', 'import', 'v', full, '--dir', path.join(root, 'bdisks')]);
    await cli(a, ['snapshot', 'delete', 'v', '--name', 's2', '--keep-children']);
    await qemuIo(disk, ['write -P 4 8M 1M']);
    await cli(a, ['snapshot', 'create', 'v', '--name', 's4']);
    const since = path.join(root, 'since.cbx');
    await cli(a, ['snapshot', 'export', 'v', '--since', 's3', '-o', since]);
    const imp = parseJsonOutput<{ snapshots: string[] }>(await cli(b, ['snapshot', 'import', 'v', since, '--json']));
    expect(imp.snapshots).toEqual(['s4']);
    const layer = (home: string) => async (name: string) =>
      parseJsonOutput<{ disks: { path: string }[] }>(await cli(home, ['snapshot', 'show', 'v', '--name', name, '--json'])).disks[0]!.path;
    for (const s of ['s3', 's4']) expect((await qemuCompare(await layer(a)(s), await layer(b)(s))).code, s).toBe(0);
  });
});
