/**
 * Listing a repository's files: the two-level fan-out directories (packs/xx/<id>, layers/xx/<name>)
 * and the bytes the repository takes. Used by gc, check and stats.
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ioError } from '../errors.js';

/** Regular files under `dir` and their bytes (every level). */
export async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await stat(path.join(e.parentPath, e.name)).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

/** File names in the two-level directories (packs/xx/id, layers/xx/name) that match `re`. */
export async function listFanout(dir: string, re: RegExp): Promise<string[]> {
  const out: string[] = [];
  let subs: string[];
  try {
    subs = await readdir(dir);
  } catch (err) {
    throw ioError(err, 'cannot read archive directory', dir);
  }
  for (const s of subs.sort()) {
    if (!/^[0-9a-f]{2}$/.test(s)) continue;
    for (const n of (await readdir(path.join(dir, s)).catch(() => [] as string[])).sort()) if (re.test(n) && n.startsWith(s)) out.push(n);
  }
  return out;
}
