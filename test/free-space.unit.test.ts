/** NO_SPACE (issue #17, item 18): the free-space check that merges, sync pulls and imports run before they write. */
import { statfs } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CloneboxError } from '../src/errors.js';
import { requireFreeSpace } from '../src/fsutil.js';
import { makeTempDir } from './helpers/temp.js';

describe('requireFreeSpace', () => {
  it('passes when the space is there and fails with NO_SPACE, the needed and the free size, when it is not', async () => {
    const dir = await makeTempDir('clonebox-space-');
    const fs = await statfs(dir);
    const free = fs.bavail * fs.bsize;
    await requireFreeSpace(dir, 1, 'a test');
    await requireFreeSpace(dir, 0, 'a test');
    const err = await requireFreeSpace(dir, free + 2 ** 40, 'merging snapshot s1 of web').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CloneboxError);
    const e = err as CloneboxError;
    expect(e.code).toBe('NO_SPACE');
    expect(e.exitCode).toBe(1);
    expect(e.message).toMatch(new RegExp(`^merging snapshot s1 of web needs [\\d.]+ TiB, [\\d.]+ \\w+ are free, ${dir}$`));
  });

  it('asks the nearest existing directory for a place about to be made', async () => {
    const dir = await makeTempDir('clonebox-space-');
    const fs = await statfs(dir);
    const err = await requireFreeSpace(path.join(dir, 'not', 'yet'), fs.bavail * fs.bsize + 2 ** 40, 'x').catch((e: unknown) => e);
    expect((err as CloneboxError).code).toBe('NO_SPACE');
  });
});
