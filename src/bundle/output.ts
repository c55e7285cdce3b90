/**
 * Where `snapshot export -o FILE` may write: judged before any work starts, so that a wrong path costs
 * nothing (issue 17: `-o DIR/` used to fail only after the whole export, and an existing file was
 * silently replaced, even the VM's own disk or a snapshot layer).
 *
 * - The path must name a file in an existing, writable directory (`IO` naming the path otherwise).
 * - An existing file is `FILE_EXISTS`. `force` replaces it only when it is a clonebox bundle that is not
 *   inside the home and not a file any VM of the home uses (disk, layer, memory state): those are
 *   refused even with `force`, since replacing them destroys snapshots.
 * - Stale temporaries of this name (`.FILE.tmp-PID-*` whose process died on this host: an export killed
 *   hard) are removed on the way.
 */
import { constants } from 'node:fs';
import { access, lstat, open, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { sweepStaleTemps } from '../fsutil.js';
import type { Home } from '../store/home.js';
import { listVmNames, loadVm } from '../store/registry.js';
import { listSnapshotRecords } from '../store/snapshots.js';
import { BUNDLE_MAGIC, ENTRY_HEADER } from './format.js';

/** Resolves and checks an export's output path; returns the absolute path to write. */
export async function checkExportOutput(home: Home, output: string, force: boolean): Promise<string> {
  const file = path.resolve(output);
  const isDirHint = { hint: `give a file name, e.g. -o ${path.join(output, 'bundle.cbx')}` };
  if (/[/\\]$/.test(output) || output === '.' || output === '..') {
    throw CloneboxError.IO(`cannot write bundle: is a directory, ${file}`, isDirHint);
  }
  const dir = path.dirname(file);
  let dirStat: Awaited<ReturnType<typeof stat>>;
  try {
    dirStat = await stat(dir);
  } catch (err) {
    throw ioError(err, 'cannot write bundle: its directory is missing or unreadable', dir);
  }
  if (!dirStat.isDirectory()) throw CloneboxError.IO(`cannot write bundle: not a directory, ${dir}`);
  try {
    await access(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    throw ioError(err, 'cannot write bundle in this directory', dir);
  }
  await sweepStaleTemps(file);
  let st: Awaited<ReturnType<typeof lstat>>;
  try {
    st = await lstat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return file;
    throw ioError(err, 'cannot write bundle', file);
  }
  if (st.isDirectory()) throw CloneboxError.IO(`cannot write bundle: is a directory, ${file}`, isDirHint);
  if (!force) {
    throw CloneboxError.FILE_EXISTS(`file already exists, ${file}`, { hint: 'choose another name, or pass --force to replace an older bundle' });
  }
  const refuse = (why: string) =>
    CloneboxError.FILE_EXISTS(`refusing to replace ${file}: ${why}`, { hint: '--force replaces only a bundle outside the clonebox home; choose another name' });
  // The file as it really is (a symlink is replaced itself by the rename, but judged by its target too).
  const real = await realpath(file).catch(() => file);
  const homeReal = await realpath(home.root).catch(() => home.root);
  for (const p of new Set([file, real])) {
    if (isInside(p, homeReal) || isInside(p, home.root)) {
      throw refuse(`${p === file ? 'it' : `it points to ${p}, which`} is inside the clonebox home ${home.root}`);
    }
  }
  const owner = await vmFileOwner(home, new Set([file, real]));
  if (owner) throw refuse(owner);
  if (!st.isFile() || !(await isBundle(file))) throw refuse('it is not a clonebox bundle');
  return file;
}

function isInside(p: string, dir: string): boolean {
  const rel = path.relative(dir, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** Which VM uses one of these paths, as what ("the disk vda of VM web"), or null. */
async function vmFileOwner(home: Home, paths: Set<string>): Promise<string | null> {
  for (const vm of await listVmNames(home)) {
    const rec = await loadVm(home, vm);
    for (const d of rec.disks) if (paths.has(path.resolve(d.path))) return `it is disk ${d.target} of VM ${vm}`;
    for (const s of await listSnapshotRecords(home, vm)) {
      for (const d of s.disks) if (paths.has(path.resolve(d.path))) return `it is a layer of snapshot ${s.name} of VM ${vm}`;
      if (s.memory_path && paths.has(path.resolve(s.memory_path))) return `it is the memory state of snapshot ${s.name} of VM ${vm}`;
    }
  }
  return null;
}

/** Whether a file starts as every bundle does: the tar header of the `header` entry, then the bundle magic. */
async function isBundle(file: string): Promise<boolean> {
  const name = Buffer.from(`${ENTRY_HEADER}\0`, 'latin1');
  const b = Buffer.alloc(512 + BUNDLE_MAGIC.length);
  try {
    const fh = await open(file, 'r');
    try {
      const { bytesRead } = await fh.read(b, 0, b.length, 0);
      if (bytesRead < b.length) return false;
    } finally {
      await fh.close();
    }
  } catch {
    return false;
  }
  return b.subarray(0, name.length).equals(name) && b.subarray(512).equals(BUNDLE_MAGIC);
}
