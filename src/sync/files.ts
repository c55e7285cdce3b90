/** Small file helpers of the sync module that src/store/fsutil.ts does not have. */
import { link, open, unlink } from 'node:fs/promises';
import path from 'node:path';
import { ioError } from '../errors.js';
import { fsyncDir, tempPathFor } from '../store/fsutil.js';

/**
 * Creates `file` with `data` only if it does not exist yet: a complete, fsynced temporary file is
 * link(2)ed into place, which fails when the name is taken. So two processes creating the same file at
 * once agree on one content, and a crash never leaves a torn file. Returns false when it existed.
 */
export async function createFileExclusive(file: string, data: string | Buffer, mode = 0o600): Promise<boolean> {
  const tmp = tempPathFor(file);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await link(tmp, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    }
    await fsyncDir(path.dirname(file));
    return true;
  } catch (err) {
    throw ioError(err, 'cannot write', file);
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}
