/**
 * Temporary directories for tests: `makeTempDir()` (removed after the test file's tests by a hook this
 * module registers, or earlier by `cleanupTempDirs()`), or `useTempDir()` which registers
 * beforeAll/afterAll hooks in the calling suite. Set CLONEBOX_KEEP_TMP=1 to keep them.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';

const tempDirs = new Set<string>();

/** Creates a fresh directory under the OS temp dir; `cleanupTempDirs()` removes it. */
export async function makeTempDir(prefix = 'clonebox-test-'): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** Removes every directory made by makeTempDir() (unless CLONEBOX_KEEP_TMP is set, for debugging). */
export async function cleanupTempDirs(): Promise<void> {
  const dirs = [...tempDirs];
  tempDirs.clear();
  if (process.env.CLONEBOX_KEEP_TMP) {
    for (const d of dirs) process.stderr.write(`kept temp dir ${d}\n`);
    return;
  }
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
}

/**
 * Registers hooks that create one temp dir before the file's (or describe block's) tests and remove
 * it after them. Returns a getter, valid inside tests and later hooks.
 */
export function useTempDir(prefix?: string): () => string {
  let dir: string | null = null;
  beforeAll(async () => {
    dir = await makeTempDir(prefix);
  });
  afterAll(async () => {
    if (dir === null) return;
    if (process.env.CLONEBOX_KEEP_TMP) process.stderr.write(`kept temp dir ${dir}\n`);
    else await rm(dir, { recursive: true, force: true });
    tempDirs.delete(dir);
  });
  return () => {
    if (dir === null) throw new Error('useTempDir(): the directory exists only inside tests and hooks');
    return dir;
  };
}

// Every test file importing this module removes its makeTempDir() directories when its tests are done
// (vitest evaluates this module once per test file, while the file's suites are being collected).
afterAll(cleanupTempDirs);
