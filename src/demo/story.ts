/**
 * `clonebox demo`: the whole story on a generated disk, through the same code the commands use.
 * Each step prints the command a user would type, then what it did.
 */
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CloneboxError } from '../errors.js';
import { formatBytes } from '../names.js';
import { SnapshotManager } from '../snapshots/manager.js';
import { resolveHome } from '../store/home.js';
import { createVm } from '../vms.js';
import { Prng, randomBlock, textBlock } from './content.js';
import { type GuestWrite, guestWrite } from './guest.js';

const MiB = 1024 * 1024;

interface DemoStep {
  command: string;
  output: string[];
}

export interface DemoResult {
  dir: string;
  home: string;
  vm: string;
  steps: DemoStep[];
  stats: { allocated_bytes: number; unique_bytes: number; savings_percent: number; physical_bytes: number };
  seconds: number;
}

/** An "OS install": binaries (random), logs and configs (text), duplicated libraries (repeats). */
function installWrites(rng: Prng): GuestWrite[] {
  const w: GuestWrite[] = [];
  for (let i = 0; i < 48; i++) w.push({ offset: i * MiB, data: randomBlock(rng, MiB) }); // binaries
  for (let i = 48; i < 112; i++) w.push({ offset: i * MiB, data: textBlock(rng, MiB) }); // logs, docs
  const lib = randomBlock(rng, 4 * MiB);
  for (let i = 0; i < 8; i++) w.push({ offset: (128 + i * 4) * MiB, data: lib }); // the same library 8 times
  return w;
}

export async function runDemo(opts: { dir?: string; log?: (line: string) => void } = {}): Promise<DemoResult> {
  const t0 = Date.now();
  const log = opts.log ?? (() => undefined);
  const dir = opts.dir ? path.resolve(opts.dir) : await mkdtemp(path.join(os.tmpdir(), 'clonebox-demo-'));
  const home = resolveHome(path.join(dir, 'home'));
  const vm = 'demo';
  const mgr = new SnapshotManager(home);
  const rng = new Prng(20261122);
  const steps: DemoStep[] = [];
  const step = (command: string, ...output: string[]) => {
    steps.push({ command, output });
    log(`$ ${command}`);
    for (const o of output) log(`  ${o}`);
  };

  const view = await createVm(home, vm, { size: 1024 * MiB, dir: path.join(dir, 'disks') });
  const disk = view.disks[0]!.path;
  step(`clonebox vm create ${vm} --size 1G --dir ${path.join(dir, 'disks')}`, `disk ${disk}`);

  const install = installWrites(rng);
  await guestWrite(disk, install);
  const installed = install.reduce((a, w) => a + ('data' in w ? w.data.length : 0), 0);
  step('(guest) install the operating system', `${formatBytes(installed)} written: binaries, logs, and one library copied 8 times`);
  let s = await mgr.create(vm, { name: 'installed', description: 'fresh install', tags: ['base'] });
  step(`clonebox snapshot create ${vm} --name installed --tags base`, `layer ${s.value.disks[0]!.path} (${formatBytes(s.value.size_bytes)})`);

  await guestWrite(disk, [
    { offset: 200 * MiB, data: textBlock(rng, 16 * MiB) },
    { offset: 48 * MiB, data: textBlock(rng, 2 * MiB) }, // config files change
  ]);
  s = await mgr.create(vm, { name: 'app-v1', description: 'application deployed' });
  step(`clonebox snapshot create ${vm} --name app-v1`, `${formatBytes(s.value.size_bytes)} changed since installed`);

  await guestWrite(disk, [{ offset: 220 * MiB, data: randomBlock(rng, 8 * MiB) }]);
  s = await mgr.create(vm, { name: 'app-v2' });
  step(`clonebox snapshot create ${vm} --name app-v2`, `${formatBytes(s.value.size_bytes)} changed since app-v1`);

  await mgr.restore(vm, { name: 'installed' });
  step(`clonebox snapshot restore ${vm} --name installed --yes`, 'back to the fresh install');
  await guestWrite(disk, [
    { offset: 300 * MiB, data: textBlock(rng, 4 * MiB) },
    { zero: 4 * MiB, offset: 0 },
  ]);
  s = await mgr.create(vm, { name: 'experiment', description: 'a risky experiment on a branch' });
  step(`clonebox snapshot create ${vm} --name experiment`, 'a new branch from installed');

  const d = await mgr.diff(vm, 'app-v2', 'experiment');
  const dd = d.disks[0]!;
  step(
    `clonebox snapshot diff ${vm} --from app-v2 --to experiment`,
    `${formatBytes(dd.changed_bytes)} differ in ${dd.ranges.length} range(s): ${dd.ranges
      .slice(0, 4)
      .map((r) => `${r.offset / MiB}M+${r.length / MiB}M`)
      .join(', ')}${dd.ranges.length > 4 ? ', ...' : ''}`,
  );

  const tree = await mgr.tree(vm);
  const lines: string[] = [];
  const walk = (nodes: typeof tree.roots, prefix: string) =>
    nodes.forEach((n, i) => {
      const last = i === nodes.length - 1;
      lines.push(`${prefix}${last ? '└── ' : '├── '}${n.current ? '* ' : ''}${n.name}`);
      walk(n.children, prefix + (last ? '    ' : '│   '));
    });
  walk(tree.roots, '');
  step(`clonebox snapshot list ${vm} --tree`, vm, ...lines);

  const st = await mgr.stats(vm);
  step(
    `clonebox snapshot stats ${vm}`,
    `virtual ${formatBytes(st.virtual_size)}, on disk ${formatBytes(st.physical_bytes)}, allocated ${formatBytes(st.allocated_bytes)}, ` +
      `after dedup ${formatBytes(st.unique_bytes)} (${st.savings_percent}% saved)`,
  );

  // Offline transfer: an encrypted bundle of the app branch, imported into a second home.
  const { generateKeyFile, loadKeySource } = await import('../bundle/crypto.js');
  const { exportBundle } = await import('../bundle/export.js');
  const { importBundle } = await import('../bundle/import.js');
  const { diffDisk } = await import('../snapshots/diff.js');
  const keyFile = path.join(dir, 'demo.key');
  await generateKeyFile(keyFile);
  step(`clonebox key generate -o ${keyFile}`, '32-byte key file (mode 0600)');
  const key = await loadKeySource({ keyFile });
  const bundle = path.join(dir, 'app-v2.cbx');
  const ex = await exportBundle(home, vm, { name: 'app-v2', output: bundle, key });
  step(
    `clonebox snapshot export ${vm} --name app-v2 --encrypt --key-file ${keyFile} -o ${bundle}`,
    `${ex.snapshots.join(', ')}: ${formatBytes(ex.logical_bytes)} of data, ${formatBytes(ex.unique_bytes)} after dedup, ` +
      `${formatBytes(ex.bundle_bytes)} in the bundle (${Math.round((1 - ex.bundle_bytes / Math.max(1, ex.logical_bytes)) * 100)}% smaller), encrypted`,
  );
  const home2 = resolveHome(path.join(dir, 'home2'));
  const im = await importBundle(home2, vm, { input: bundle, key, dir: path.join(dir, 'disks2') });
  step(
    `clonebox --home ${home2.root} snapshot import ${vm} ${bundle} --key-file ${keyFile}`,
    `${im.snapshots.join(', ')} rebuilt as qcow2 layers (${formatBytes(im.bytes_written)} written) in a second home`,
  );
  const mgr2 = new SnapshotManager(home2);
  const theirs = new Map((await mgr2.list(vm)).map((v) => [v.name, v]));
  const differing: string[] = [];
  for (const v of (await mgr.list(vm)).filter((x) => theirs.has(x.name))) {
    const d = await diffDisk('vda', v.disks[0]!.path, theirs.get(v.name)!.disks[0]!.path, null);
    if (d.changed_bytes !== 0) differing.push(v.name);
  }
  step(
    '(compare every imported snapshot with its source, byte for byte)',
    differing.length === 0 ? `${theirs.size} snapshot(s) identical` : `DIFFERENT: ${differing.join(', ')}`,
  );
  if (differing.length) throw new CloneboxError('INTERNAL', `demo: imported snapshots differ from their source: ${differing.join(', ')}`);

  return {
    dir,
    home: home.root,
    vm,
    steps,
    stats: { allocated_bytes: st.allocated_bytes, unique_bytes: st.unique_bytes, savings_percent: st.savings_percent, physical_bytes: st.physical_bytes },
    seconds: Math.round((Date.now() - t0) / 100) / 10,
  };
}
