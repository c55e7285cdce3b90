/**
 * archive forget, gc, check and append-only mode (issue 19), on a real repository made by `archive push`
 * of a real qcow2 tree (test/helpers/archive-repo.ts): forget + gc free exactly the blocks only the
 * forgotten snapshot held, check names every damaged file, an append-only repository refuses forget and
 * gc without its delete key, and gc and push exclude each other through the repository lock.
 */
import { cp, open, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { lockShared } from '../src/archive/lock.js';
import { Repo } from '../src/archive/repo.js';
import { checkArchive, expectRestorable, makeArchive } from './helpers/archive-repo.js';
import { parseCliError, parseJsonOutput } from './helpers/cli.js';
import { makeTempDir } from './helpers/temp.js';

interface GcJson {
  blocks_kept: number;
  blocks_removed: number;
  packs_removed: number;
  packs_rewritten: number;
  layers_removed: number;
  bytes_before: number;
  bytes_after: number;
}

async function flip(file: string, at: number): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0]! ^= 0x40;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

describe('archive forget + gc', () => {
  it('frees exactly the blocks only the forgotten snapshot held; the rest checks and restores', { timeout: 300_000 }, async () => {
    const f = await makeArchive(await makeTempDir('clonebox-archive-ops-'));
    const before = await checkArchive(f.cli, f.repo);
    expect(before.ok, JSON.stringify(before.errors)).toBe(true);

    // keep-last 1 keeps s3, and s1 because s3 stands on it; s2 goes.
    const dry = await f.cli.json<{ keep: { name: string; reasons: string[] }[]; remove: { name: string }[] }>([
      'archive',
      'forget',
      'web',
      '--keep-last',
      '1',
      '--dry-run',
      '--repo',
      f.repo,
    ]);
    expect(dry.remove.map((r) => r.name)).toEqual(['s2']);
    expect(dry.keep.find((k) => k.name === 's1')?.reasons).toEqual(['ancestor of s3']);
    const forgot = await f.cli.json<{ remove: { name: string }[]; records_written: number }>([
      'archive',
      'forget',
      'web',
      '--keep-last',
      '1',
      '--repo',
      f.repo,
    ]);
    expect(forgot.remove.map((r) => r.name)).toEqual(['s2']);
    const list = await f.cli.json<{ name: string }[]>(['archive', 'list', 'web', '--repo', f.repo]);
    expect(list.map((s) => s.name).sort()).toEqual(['s1', 's3']);

    const gc = await f.cli.json<GcJson>(['archive', 'gc', '--repo', f.repo]);
    // s2's layer held 512 KiB of its own random data: 8 blocks of 64 KiB, nothing else.
    expect(gc.blocks_removed).toBe(8);
    expect(gc.layers_removed).toBe(1);
    expect(gc.blocks_kept).toBe(before.blocks - 8);
    const after = await checkArchive(f.cli, f.repo);
    expect(after.ok, JSON.stringify(after.errors)).toBe(true);
    expect(after.notes).toEqual([]);
    expect(after.blocks).toBe(before.blocks - 8);
    expect(after.blocks_read).toBe(before.blocks - 8);
    // Random data does not compress: the repository shrinks by about its 512 KiB.
    const freed = gc.bytes_before - gc.bytes_after;
    expect(freed).toBeGreaterThan(0.95 * 512 * 1024);
    expect(freed).toBeLessThan(512 * 1024 + 64 * 1024);
    await expectRestorable(f, f.repo, ['s1', 's3'], 'after gc');
    // A second gc finds nothing more.
    const again = await f.cli.json<GcJson>(['archive', 'gc', '--repo', f.repo]);
    expect([again.blocks_removed, again.layers_removed, again.packs_removed, again.packs_rewritten]).toEqual([0, 0, 0, 0]);
  });
});

describe('archive check', () => {
  it('names the damaged file for a flipped byte in a record, an index file, a layer map, a pack', { timeout: 300_000 }, async () => {
    const f = await makeArchive(await makeTempDir('clonebox-archive-check-'));
    const files = await filesUnder(f.repo);
    const pick = (dir: string) => files.filter((x) => x.includes(`${path.sep}${dir}${path.sep}`) && !path.basename(x).startsWith('.'));
    const record = pick('snapshots')[0]!;
    const index = pick('index')[0]!;
    const layer = pick('layers')[0]!;
    const pack = pick('packs')[0]!;
    const packSize = (await stat(pack)).size;
    const cases: [string, string, number, boolean][] = [
      ['record', record, 20, false],
      ['index entry', index, 20, false],
      ['index trailer', index, (await stat(index)).size - 40, false],
      ['layer map', layer, 30, false],
      ['pack trailer', pack, packSize - 30, false],
      ['pack frame header', pack, 14, false],
      // Plain packs tag a frame's header, not its compressed bytes: only --read-data reads those.
      ['pack data', pack, Math.floor(packSize / 3), true],
    ];
    for (const [what, file, at, needsData] of cases) {
      const copy = path.join(f.root, `copy-${what.replace(/ /g, '-')}`);
      await cp(f.repo, copy, { recursive: true });
      const target = path.join(copy, path.relative(f.repo, file));
      await flip(target, at);
      const r = await checkArchive(f.cli, copy);
      expect(r.ok, `${what}: found`).toBe(false);
      expect(
        r.errors.some((e) => e.file === target || e.message.includes(path.basename(target))),
        `${what}: the damaged file is named: ${JSON.stringify(r.errors)}`,
      ).toBe(true);
      if (needsData) expect((await checkArchive(f.cli, copy, false)).ok, `${what}: without --read-data`).toBe(true);
      const text = await f.cli.cli(['archive', 'check', '--repo', copy, '--read-data']);
      expect(text.code).toBe(1);
      expect(text.stderr).toContain(path.basename(target));
    }
    // The config: the repository does not open, and the error says which file.
    const copy = path.join(f.root, 'copy-config');
    await cp(f.repo, copy, { recursive: true });
    await flip(path.join(copy, 'config'), 50);
    const r = await f.cli.cli(['archive', 'check', '--repo', copy, '--json']);
    expect(r.code).toBe(1);
    const err = parseCliError(r, true);
    expect(err.code).toBe('ARCHIVE_CORRUPT');
    expect(err.message).toContain(path.join(copy, 'config'));
  });
});

describe('append-only repositories', () => {
  it('push works; forget and gc need the delete key', { timeout: 300_000 }, async () => {
    const root = await makeTempDir('clonebox-archive-ao-');
    const key = path.join(root, 'delete.key');
    const other = path.join(root, 'other.key');
    const { runCli } = await import('./helpers/cli.js');
    for (const k of [key, other]) expect((await runCli(['key', 'generate', '-o', k], { home: path.join(root, 'h0') })).code).toBe(0);
    const f = await makeArchive(root, { init: ['--append-only', '--delete-key-file', key] });
    expect((await checkArchive(f.cli, f.repo)).ok).toBe(true);
    for (const op of [['forget', 'web', '--keep-last', '1'], ['gc']]) {
      const none = await f.cli.cli(['archive', ...op, '--repo', f.repo, '--json']);
      expect(parseCliError(none, true).code, op[0]).toBe('ARCHIVE_APPEND_ONLY');
      const wrong = await f.cli.cli(['archive', ...op, '--repo', f.repo, '--delete-key-file', other, '--json']);
      expect(parseCliError(wrong, true).code, op[0]).toBe('WRONG_KEY');
    }
    // Nothing was deleted: every snapshot is still there.
    expect((await f.cli.json<{ name: string }[]>(['archive', 'list', 'web', '--repo', f.repo])).map((s) => s.name).sort()).toEqual(['s1', 's2', 's3']);
    // Removing the key check unlocks nothing.
    const copy = path.join(root, 'copy');
    await cp(f.repo, copy, { recursive: true });
    const { unlink } = await import('node:fs/promises');
    await unlink(path.join(copy, 'append-only'));
    expect(parseCliError(await f.cli.cli(['archive', 'gc', '--repo', copy, '--delete-key-file', other, '--json']), true).code).toBe('ARCHIVE_CORRUPT');
    // With the key: forget and gc work; a dry run needs none.
    expect((await f.cli.cli(['archive', 'forget', 'web', '--keep-last', '1', '--dry-run', '--repo', f.repo])).code).toBe(0);
    await f.cli.ok(['archive', 'forget', 'web', '--keep-last', '1', '--repo', f.repo, '--delete-key-file', key]);
    const gc = await f.cli.json<GcJson>(['archive', 'gc', '--repo', f.repo, '--delete-key-file', key]);
    expect(gc.blocks_removed).toBe(8);
    expect((await checkArchive(f.cli, f.repo)).ok).toBe(true);
  });
});

describe('gc and push exclude each other', () => {
  it('a gc waits for a running push and gives up with ARCHIVE_BUSY; a push waits for a running gc', { timeout: 300_000 }, async () => {
    const f = await makeArchive(await makeTempDir('clonebox-archive-lock-'));
    const repo = await Repo.open(f.repo, null);
    const held = await lockShared(repo, 'a push of this test');
    try {
      const r = await f.cli.cli(['archive', 'gc', '--repo', f.repo, '--json'], { env: { CLONEBOX_LOCK_WAIT_MS: '300' } });
      const err = parseCliError(r, true);
      expect(err.code).toBe('ARCHIVE_BUSY');
      expect(err.hint).toContain('a push of this test');
      // The gc that gave up left no exclusive lock behind: a push goes on.
      await f.cli.ok(['archive', 'push', 'web', '--repo', f.repo]);
    } finally {
      await held.release();
    }
    const { lockExclusive } = await import('../src/archive/exclusive-lock.js');
    const gcLock = await lockExclusive(repo, 'a gc of this test');
    try {
      const r = await f.cli.cli(['archive', 'push', 'web', '--repo', f.repo, '--json'], { env: { CLONEBOX_LOCK_WAIT_MS: '300' } });
      expect(parseCliError(r, true).code).toBe('ARCHIVE_BUSY');
    } finally {
      await gcLock.release();
    }
    expect(parseJsonOutput<{ ok: boolean }>(await f.cli.cli(['archive', 'check', '--repo', f.repo, '--json'])).ok).toBe(true);
  });
});
