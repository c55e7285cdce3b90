/**
 * Durable file primitives: everything clonebox writes goes through a temporary file in the target's
 * directory, fsync, rename, and an fsync of the directory, so a crash leaves either the old or the
 * new content and never a torn file.
 */

import { unlinkSync } from 'node:fs';
import { chmod, link, mkdir, open, readdir, rename, stat, statfs, unlink } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from './errors.js';
import { formatBytes } from './names.js';

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

let tempCounter = 0;

/**
 * A fresh hidden sibling name for writing `file` (`.<name>.tmp-<pid>-<n><random>`). Callers create it
 * with O_EXCL, so a clash fails instead of sharing a file; the counter keeps names of one process
 * apart and the random part those of a reused pid. Not node:crypto: that would cost every command
 * its start-up, and the name guards against accidents, not an attacker (who could write the
 * directory anyway).
 */
export function tempPathFor(file: string): string {
  const unique = `${(++tempCounter).toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${unique}`);
  liveTemps.add(tmp);
  if (!exitHooked) {
    exitHooked = true;
    process.once('exit', removeLiveTempsSync);
  }
  return tmp;
}

/**
 * Temporary names this process handed out and has not finished with. Whatever way the process ends
 * short of SIGKILL (a second Ctrl-C that exits at once, an uncaught error, process.exit anywhere), its
 * 'exit' hook deletes those still on disk, so no temporary outlives its writer; a name already renamed
 * into place is simply gone (ENOENT), and no other process ever uses a name with our pid in it.
 */
const liveTemps = new Set<string>();
let exitHooked = false;

/** The temporary was renamed into place or deleted: the exit hook forgets it. */
export function tempDone(tmp: string): void {
  liveTemps.delete(tmp);
}

/** Deletes this process's temporaries still on disk (synchronously: it runs in the 'exit' hook). */
function removeLiveTempsSync(): void {
  for (const tmp of liveTemps) {
    try {
      unlinkSync(tmp);
    } catch {
      /* renamed into place, or never created */
    }
  }
  liveTemps.clear();
}

/** Whether a process with this pid exists on this host (EPERM: it does, owned by someone else). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Deletes the temporaries of `file` (`.<name>.tmp-<pid>-*`, see tempPathFor) whose process is dead
 * on this host: what a writer killed with SIGKILL (or a power cut) left. Returns how many it removed.
 * A pid that is alive (the writer, or an unrelated process that reused the pid) keeps its file.
 */
export function sweepStaleTemps(file: string): Promise<number> {
  const base = path.basename(file);
  return sweepDir(path.dirname(file), (n) => n === base);
}

/** sweepStaleTemps() for the temporaries in `dir` of every file whose name `accept` takes (default: all). */
export function sweepStaleTempsIn(dir: string, accept: (name: string) => boolean = () => true): Promise<number> {
  return sweepDir(dir, accept);
}

const TEMP_NAME = /^\.(.+)\.tmp-(\d{1,10})-[0-9a-z]+$/;

async function sweepDir(dir: string, accept: (name: string) => boolean): Promise<number> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const n of names) {
    const m = TEMP_NAME.exec(n);
    if (!m || !accept(m[1]!)) continue;
    const pid = Number(m[2]);
    if (pid <= 0 || pid === process.pid || pidAlive(pid)) continue;
    if (
      await unlink(path.join(dir, n)).then(
        () => true,
        () => false,
      )
    )
      removed++;
  }
  return removed;
}

/**
 * Makes `files` durable: each fsynced, several at once (the file system commits them together), then
 * each directory holding one. For many files written without their own fsyncs (Qcow2Writer.finish
 * with `durable: false`): one fsync each in sequence, and one of their directory each, was most of
 * the time a pull of a long history spent writing its small layers.
 */
export async function syncFiles(files: string[], concurrency = 16): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < files.length) {
      const f = files[next++]!;
      try {
        const fh = await open(f, 'r');
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
      } catch (err) {
        throw ioError(err, 'cannot sync', f);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, files.length) }, lane));
  for (const dir of new Set(files.map((f) => path.dirname(f)))) await fsyncDir(dir);
}

/** Writes `data` to a new temporary sibling of `file`, fsynced unless `durable` is false; returns its path. */
async function writeTempSynced(file: string, data: string | Buffer, mode: number, durable = true): Promise<string> {
  const tmp = tempPathFor(file);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      if (durable) await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    // A full disk or a failed write must not leave the partial temporary behind.
    await unlink(tmp).catch(() => undefined);
    tempDone(tmp);
    throw err;
  }
  return tmp;
}

/**
 * Replaces `file` with `data` at once: readers see the old or the new content, never a mix. `durable:
 * false` skips both fsyncs, for files that mean nothing after a crash (a pin names a live process):
 * still atomic, no longer guaranteed to survive one.
 */
export async function writeFileAtomic(file: string, data: string | Buffer, mode = 0o644, durable = true): Promise<void> {
  let tmp: string | null = null;
  try {
    tmp = await writeTempSynced(file, data, mode, durable);
    await rename(tmp, file);
  } catch (err) {
    if (tmp) await unlink(tmp).catch(() => undefined);
    throw ioError(err, 'cannot write', file);
  } finally {
    if (tmp) tempDone(tmp);
  }
  if (durable) await fsyncDir(path.dirname(file));
}

/**
 * Creates `file` with `data` only if it does not exist yet: a complete, fsynced temporary file is
 * link(2)ed into place, which fails when the name is taken. So two processes creating the same file at
 * once agree on one content, and a crash never leaves a torn file. Returns false when it existed.
 */
export async function createFileExclusive(file: string, data: string | Buffer, mode = 0o600): Promise<boolean> {
  let tmp: string | null = null;
  try {
    tmp = await writeTempSynced(file, data, mode);
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
    if (tmp) {
      await unlink(tmp).catch(() => undefined);
      tempDone(tmp);
    }
  }
}

export async function writeJsonAtomic(file: string, value: unknown, mode = 0o644, durable = true): Promise<void> {
  await writeFileAtomic(file, `${JSON.stringify(value, null, 2)}\n`, mode, durable);
}

export async function ensureDir(dir: string, mode = 0o755): Promise<void> {
  try {
    await makeDirs(path.resolve(dir), mode);
  } catch (err) {
    throw ioError(err, 'cannot create directory', (err as NodeJS.ErrnoException).path ?? dir);
  }
}

/**
 * `mkdir -p`, one level at a time. Not Node's `mkdir({recursive: true})`: on a file system that answers
 * ENOENT for a directory whose parent exists (procfs: `--home /proc`) it retries forever at full CPU
 * (issue 17). Here ENOENT under an existing parent is the answer, and the walk is bounded by the path.
 */
async function makeDirs(dir: string, mode: number): Promise<void> {
  const missing: string[] = [];
  for (let d = dir; ; d = path.dirname(d)) {
    try {
      await mkdir(d, { mode });
      break;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        if (!(await stat(d)).isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, ${d}`), { code: 'ENOTDIR' });
        break;
      }
      if (code !== 'ENOENT' || path.dirname(d) === d) throw err;
      // The parent exists, so this ENOENT is the file system refusing the name: no retry can help.
      if (
        await stat(path.dirname(d)).then(
          (st) => st.isDirectory(),
          () => false,
        )
      )
        throw err;
      missing.push(d);
    }
  }
  for (const d of missing.reverse()) {
    try {
      await mkdir(d, { mode });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
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

/**
 * Bytes an unprivileged process may still write on the file system holding `p` (statfs `bavail`), or
 * null when the system cannot say. `p` may be a file or a directory; the nearest existing ancestor
 * is asked, so a directory about to be created can be checked.
 */
export async function freeSpace(p: string): Promise<number | null> {
  let at = path.resolve(p);
  for (;;) {
    try {
      const s = await statfs(at);
      return s.bavail * s.bsize;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const up = path.dirname(at);
      if ((code === 'ENOENT' || code === 'ENOTDIR') && up !== at) {
        at = up;
        continue;
      }
      return null;
    }
  }
}

/**
 * Refuses with NO_SPACE when `bytes` would not fit in the free space at `p` (unknown free space passes):
 * the one check before a large write whose size is known up front (merges, pulls, imports of a size).
 * @public the free-space checks of other commands use it (issue #17 item 18).
 */
export async function requireFreeSpace(p: string, bytes: number, what: string): Promise<void> {
  const free = await freeSpace(p);
  if (free !== null && bytes > free) {
    throw CloneboxError.NO_SPACE(`${what} needs ${formatBytes(bytes)}, ${formatBytes(free)} are free, ${p}`, {
      hint: 'free some space, or choose another place',
    });
  }
}

/**
 * Makes `dir` (and missing parents) a directory only its owner can enter, and tightens it when it
 * exists with group or other bits. Returns true when an existing directory was tightened, so that the
 * caller can warn (someone else may have read it meanwhile).
 */
export async function ensurePrivateDir(dir: string): Promise<boolean> {
  await ensureDir(dir, 0o700);
  let mode: number;
  try {
    mode = (await stat(dir)).mode & 0o777;
  } catch (err) {
    throw ioError(err, 'cannot read directory', dir);
  }
  if ((mode & 0o077) === 0) return false;
  try {
    await chmod(dir, mode & 0o700);
  } catch (err) {
    throw ioError(err, 'cannot restrict directory', dir);
  }
  return true;
}
