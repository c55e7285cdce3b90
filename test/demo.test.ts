/** `clonebox demo` runs the whole story with nothing but Node, and leaves valid images behind. */

import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import { qemuCheck, qemuCompare } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

describe('demo', () => {
  it('runs the story and every image it leaves passes qemu-img check', async () => {
    const dir = await makeTempDir('clonebox-demo-');
    const r = await runCli(['demo', '--dir', dir, '--json'], { home: null, env: { HOME: dir } });
    expect(r.code, r.stderr).toBe(0);
    const out = parseJsonOutput<{
      vm: string;
      steps: { command: string; output: string[] }[];
      stats: { savings_percent: number; unique_bytes: number; allocated_bytes: number };
    }>(r);
    const commands = out.steps.map((s) => s.command).join('\n');
    for (const c of [
      'vm create',
      'snapshot create',
      'snapshot restore',
      'snapshot diff',
      'snapshot list',
      'snapshot stats',
      'key generate',
      'snapshot export',
      'snapshot import',
    ])
      expect(commands).toContain(c);
    expect(out.steps.at(-1)!.output).toEqual(['3 snapshot(s) identical']);
    expect(out.stats.unique_bytes).toBeLessThan(out.stats.allocated_bytes); // the repeated library deduplicates
    const tree = await runCli(['snapshot', 'list', 'demo', '--tree', '--json'], { home: path.join(dir, 'home') });
    const t = parseJsonOutput<{ current: string; roots: { name: string; children: { name: string }[] }[] }>(tree);
    expect(t.current).toBe('experiment');
    expect(t.roots.map((n) => n.name)).toEqual(['installed']);
    expect(t.roots[0]!.children.map((c) => c.name)).toEqual(['app-v1', 'experiment']);
    const images = (await readdir(path.join(dir, 'disks'))).filter((f) => f.endsWith('.qcow2'));
    expect(images.length).toBe(5);
    for (const f of images) expect((await qemuCheck(path.join(dir, 'disks', f))).code, f).toBe(0);
    // The imported copy: three layers and an overlay, each identical to its source snapshot.
    const imported = (await readdir(path.join(dir, 'disks2'))).filter((f) => f.endsWith('.qcow2')).sort();
    expect(imported).toEqual(['demo.qcow2', 'demo@app-v1.qcow2', 'demo@app-v2.qcow2', 'demo@installed.qcow2']);
    for (const f of imported) expect((await qemuCheck(path.join(dir, 'disks2', f))).code, f).toBe(0);
    for (const s of ['installed', 'app-v1', 'app-v2']) {
      const cmp = await qemuCompare(path.join(dir, 'disks', `demo@${s}.qcow2`), path.join(dir, 'disks2', `demo@${s}.qcow2`));
      expect(cmp.code, s).toBe(0);
    }
  });
});
