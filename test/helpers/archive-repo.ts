/**
 * A small archive for the forget/gc/check and crash tests: VM `web` (16 MiB disk) with a tree
 *
 *   s1 (1 MiB random)  ->  s2 (512 KiB random, only s2 holds it)
 *                      ->  s3 (256 KiB random, on s1 after a restore)
 *
 * pushed into a repository; and the checks those tests end with: `archive check --read-data` passes,
 * every kept snapshot restores identical (qemu-img compare) to its source layer.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';
import { CliHome, parseJsonOutput } from './cli.js';
import { qemuCompare, qemuIo } from './qemu.js';
import { rng } from './random.js';

export interface ArchiveFixture {
  root: string;
  cli: CliHome;
  disks: string;
  repo: string;
  /** The source layer of each snapshot of `web`. */
  layer(snap: string): string;
}

/** Builds `web` with its tree and (unless `push` is false) pushes it into a new repository at root/repo. */
export async function makeArchive(root: string, opts: { push?: boolean; init?: string[] } = {}): Promise<ArchiveFixture> {
  const home = path.join(root, 'home');
  const disks = path.join(root, 'disks');
  const repo = path.join(root, 'repo');
  const cli = new CliHome(home);
  await cli.ok(['vm', 'create', 'web', '--size', '16M', '--dir', disks]);
  const disk = path.join(disks, 'web.qcow2');
  const r = rng(19);
  const data = async (name: string, n: number) => {
    const f = path.join(root, name);
    await writeFile(f, r.bytes(n));
    return f;
  };
  await qemuIo(disk, [`write -s ${await data('a.bin', 1024 * 1024)} 0 1M`]);
  await cli.ok(['snapshot', 'create', 'web', '--name', 's1']);
  await qemuIo(disk, [`write -s ${await data('b.bin', 512 * 1024)} 4M 512k`]);
  await cli.ok(['snapshot', 'create', 'web', '--name', 's2']);
  await cli.ok(['snapshot', 'restore', 'web', '--name', 's1', '--yes']);
  await qemuIo(disk, [`write -s ${await data('c.bin', 256 * 1024)} 8M 256k`]);
  await cli.ok(['snapshot', 'create', 'web', '--name', 's3']);
  await cli.ok(['archive', 'init', repo, ...(opts.init ?? [])]);
  if (opts.push !== false) await cli.ok(['archive', 'push', 'web', '--repo', repo]);
  return { root, cli, disks, repo, layer: (s) => path.join(disks, `web@${s}.qcow2`) };
}

export interface CheckJson {
  ok: boolean;
  errors: { file: string; message: string }[];
  notes: { file: string; message: string }[];
  blocks: number;
  blocks_read: number;
}

/** `archive check --read-data --json` of `repo` (exit 0 or 1, never anything else). */
export async function checkArchive(cli: CliHome, repo: string, readData = true): Promise<CheckJson> {
  const r = await cli.cli(['archive', 'check', '--repo', repo, ...(readData ? ['--read-data'] : []), '--json']);
  if (r.code !== 0 && r.code !== 1) throw new Error(`archive check exited ${r.code}: ${r.stderr}`);
  return parseJsonOutput<CheckJson>(r);
}

/**
 * Restores the snapshots (newest name first; a restore rebuilds the whole line root..S, so a snapshot
 * already seen in a restored line is not restored again) and compares every restored snapshot with its
 * source layer. The restored VMs stay in the home (the crash tests start each round from a copy).
 */
export async function expectRestorable(f: ArchiveFixture, repo: string, snaps: string[], label: string): Promise<void> {
  const seen = new Set<string>();
  for (const s of [...snaps].sort().reverse()) {
    if (seen.has(s)) continue;
    const as = `r-${s}-${Math.random().toString(36).slice(2, 8)}`;
    const r = await f.cli.cli(['archive', 'restore', 'web', s, '--repo', repo, '--as', as, '--dir', path.join(f.root, 'restored', as), '--json']);
    expect(r.code, `${label}: restore ${s}: ${r.stderr}`).toBe(0);
    const list = parseJsonOutput<{ name: string; disks: { path: string }[] }[]>(await f.cli.ok(['snapshot', 'list', as, '--json']));
    expect(
      list.some((x) => x.name === s),
      `${label}: restored ${as} has ${s}`,
    ).toBe(true);
    for (const x of list) {
      if (!snaps.includes(x.name)) continue;
      expect((await qemuCompare(f.layer(x.name), x.disks[0]!.path)).code, `${label}: ${x.name} restores identical`).toBe(0);
      seen.add(x.name);
    }
  }
  expect([...seen].sort(), `${label}: every snapshot restored`).toEqual([...snaps].sort());
}
