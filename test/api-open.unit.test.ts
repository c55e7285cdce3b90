/**
 * Clonebox.open and close: the home is resolved (argument, else $CLONEBOX_HOME), close() is idempotent
 * and refuses later calls, and failures are coded CloneboxErrors (an abort before the start included).
 * In-process, no qemu or network (the unit lane).
 */

import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Clonebox, CloneboxError, formatBytes, parseSize } from '../src/index.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

afterAll(cleanupTempDirs);

async function codeOf(p: Promise<unknown>): Promise<string | null> {
  return p.then(
    () => null,
    (e: unknown) => (e instanceof CloneboxError ? e.code : `not a CloneboxError: ${String(e)}`),
  );
}

it('opens a home given or from $CLONEBOX_HOME, without creating it', async () => {
  const root = await makeTempDir('clonebox-api-open-');
  const given = await Clonebox.open({ home: path.join(root, 'given') });
  expect(given.home).toBe(path.join(root, 'given'));
  expect(await given.vms.list()).toEqual([]);
  expect(await given.teams.list()).toEqual([]);
  expect(given.warnings).toEqual([]);
  expect(existsSync(path.join(root, 'given'))).toBe(false);
  await given.close();
  const saved = process.env.CLONEBOX_HOME;
  process.env.CLONEBOX_HOME = path.join(root, 'env');
  try {
    const fromEnv = await Clonebox.open();
    expect(fromEnv.home).toBe(path.join(root, 'env'));
    await fromEnv.close();
  } finally {
    if (saved === undefined) delete process.env.CLONEBOX_HOME;
    else process.env.CLONEBOX_HOME = saved;
  }
});

it('close() is idempotent and later calls reject with USAGE', async () => {
  const cb = await Clonebox.open({ home: await makeTempDir('clonebox-api-close-') });
  await cb.close();
  await cb.close();
  expect(await codeOf(cb.vms.list())).toBe('USAGE');
  expect(await codeOf(cb.snapshots.list('x'))).toBe('USAGE');
});

it('rejects with the codes the CLI reports', async () => {
  const root = await makeTempDir('clonebox-api-codes-');
  const cb = await Clonebox.open({ home: path.join(root, 'home') });
  try {
    expect(await codeOf(cb.vms.show('missing'))).toBe('VM_NOT_FOUND');
    expect(await codeOf(cb.vms.create('bad name', { size: '1G' }))).toBe('BAD_NAME');
    expect(await codeOf(cb.vms.create('ok', { size: 'lots' }))).toBe('BAD_SIZE');
    expect(await codeOf(cb.snapshots.restore('x', {}))).toBe('USAGE');
    expect(await codeOf(cb.snapshots.restore('x', { name: 'a', at: '2020-01-01' }))).toBe('USAGE');
    expect(await codeOf(cb.bundles.export('x', { output: path.join(root, 'b'), encrypt: true }))).toBe('USAGE');
    expect(await codeOf(cb.bundles.export('x', { output: path.join(root, 'b'), keyFile: 'k' }))).toBe('USAGE');
    expect(await codeOf(cb.bundles.verify(path.join(root, 'none.cbx')))).toBe('IO');
    const ac = new AbortController();
    ac.abort();
    expect(await codeOf(cb.bundles.export('x', { output: path.join(root, 'b'), signal: ac.signal }))).toBe('ABORTED');
    expect(existsSync(path.join(root, 'b'))).toBe(false);
  } finally {
    await cb.close();
  }
});

it('exports the helpers the CLI renders with', () => {
  expect(parseSize('64K')).toBe(65536);
  expect(formatBytes(1536 * 1024)).toBe('1.50 MiB');
});
