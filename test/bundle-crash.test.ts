/**
 * An import killed (SIGKILL) at every journal step: the next import of the same bundle recovers the
 * interrupted one (rolls it back, or forward once it was committing) and the VM ends up complete and
 * identical to its source, with no temporary file left behind.
 */

import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import { qemuCheck, qemuCompare, qemuIo } from './helpers/qemu.js';
import { rng } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

describe('import crash safety', () => {
  it('recovers from a SIGKILL at every journal step', async () => {
    const root = await makeTempDir('clonebox-bundle-crash-');
    const home = path.join(root, 'home');
    const disks = path.join(root, 'disks');
    await mkdir(disks);
    const ok = async (h: string, args: string[], env: NodeJS.ProcessEnv = {}) => {
      const r = await runCli(args, { home: h, env });
      if (r.code !== 0) throw new Error(`clonebox ${args.join(' ')}: ${r.stderr}`);
      return r;
    };
    await ok(home, ['vm', 'create', 'src', '--size', '8M', '--dir', disks]);
    const data = path.join(root, 'data.bin');
    await writeFile(data, rng(4).bytes(1024 * 1024));
    await qemuIo(path.join(disks, 'src.qcow2'), [`write -s ${data} 0 1M`, 'write -z 2M 64k']);
    await ok(home, ['snapshot', 'create', 'src', '--name', 'a']);
    await qemuIo(path.join(disks, 'src.qcow2'), ['write -P 0x3 4M 128k']);
    await ok(home, ['snapshot', 'create', 'src', '--name', 'b']);
    const bundle = path.join(root, 'b.bundle');
    await ok(home, ['snapshot', 'export', 'src', '-o', bundle]);

    let completedAt = 0;
    for (let n = 1; n < 60; n++) {
      const h = path.join(root, `h${n}`);
      const dir = path.join(root, `d${n}`);
      const crashed = await runCli(['snapshot', 'import', 'dst', bundle, '--dir', dir, '--json'], { home: h, env: { CLONEBOX_CRASH_AT: String(n) } });
      if (crashed.code === 0) {
        completedAt = n; // more crash points than the import has: it ran to the end
        break;
      }
      expect(crashed.signal, `step ${n}: ${crashed.stderr}`).toBe('SIGKILL');
      // The next import recovers: either it rolled back and imports now, or the killed one had
      // committed and is finished by the recovery (then the VM exists).
      const again = await runCli(['snapshot', 'import', 'dst', bundle, '--dir', dir, '--json'], { home: h });
      if (again.code !== 0) expect(parseJsonOutput<{ error: { code: string } }>(again).error.code, `step ${n}`).toBe('VM_EXISTS');
      const list = parseJsonOutput<{ name: string; disks: { path: string }[] }[]>(await ok(h, ['snapshot', 'list', 'dst', '--json']));
      expect(list.map((s) => s.name).sort(), `step ${n}`).toEqual(['a', 'b']);
      for (const s of list) {
        const src = path.join(disks, `src@${s.name}.qcow2`);
        expect((await qemuCompare(src, s.disks[0]!.path)).code, `step ${n} snapshot ${s.name}`).toBe(0);
        expect((await qemuCheck(s.disks[0]!.path)).code).toBe(0);
      }
      expect((await readdir(dir)).sort(), `step ${n}: files left`).toEqual(['dst.qcow2', 'dst@a.qcow2', 'dst@b.qcow2']);
      expect(await readdir(path.join(h, 'vms', 'dst')).then((f) => f.filter((x) => x !== 'snapshots').sort())).toEqual(['vm.json']);
    }
    expect(completedAt, `the import has ${completedAt - 1} crash points`).toBeGreaterThan(10);
  }, 600_000);
});
