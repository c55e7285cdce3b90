/**
 * Durable file primitives: everything clonebox writes goes through a temporary file in the target's
 * directory, fsync, rename, and an fsync of the directory, so a crash leaves either the old or the
 * new content and never a torn file.
 */
import { open, rename, unlink, mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ioError } from '../errors.js';

export async function fsyncDir(dir: string): Promise<void> {
  // Directories can be opened read-only and fsynced on Linux; where that is refused we carry on, as
  // the rename itself has happened and only its durability across power loss is weaker.
  try {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    /* best effort */
  }
}

export function tempPathFor(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

export async function writeFileAtomic(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  const tmp = tempPathFor(file);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw ioError(err, 'cannot write', file);
  }
  await fsyncDir(path.dirname(file));
}

export async function writeJsonAtomic(file: string, value: unknown, mode = 0o644): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(value, null, 2) + '\n', mode);
}

export async function ensureDir(dir: string, mode = 0o755): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode });
  } catch (err) {
    throw ioError(err, 'cannot create directory', dir);
  }
}

export async function pathExists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}
