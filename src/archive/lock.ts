/**
 * The repository lock (locks/): shared for writers that only add (push, import), exclusive for what
 * deletes (gc). Each holder is a file with JSON {pid, host, command, since}:
 *
 *   locks/shared-<pid>-<8 hex>   one per push or import, created with O_EXCL, removed when done
 *   locks/exclusive              the gc's, created with O_EXCL
 *
 * A shared holder creates its file, then looks for an exclusive one: if a live one is there it removes
 * its own file and waits (up to CLONEBOX_LOCK_WAIT_MS, then ARCHIVE_BUSY). The exclusive side does the
 * reverse (creates `exclusive`, then waits for the shared files to go), so whichever order two
 * processes act in, they never both go on. A holder that died on this host (its pid is gone) counts as
 * absent; one on another host is live until removed by hand.
 */
import { randomBytes } from 'node:crypto';
import { open, readdir, readFile, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { nowIso } from '../clock.js';
import { CloneboxError, ioError } from '../errors.js';
import { pidAlive } from '../fsutil.js';
import type { Repo } from './repo.js';

/** @public the exclusive side (gc, branch archive-ops) reads holders too. */
export interface LockHolder {
  pid: number;
  host: string;
  command: string;
  since: string;
}

/** @public the exclusive side (gc, branch archive-ops) takes this file and waits for the shared ones. */
export const EXCLUSIVE_LOCK = 'exclusive';
/** @public as EXCLUSIVE_LOCK. */
export const SHARED_LOCK_RE = /^shared-\d{1,10}-[0-9a-f]{8}$/;

function lockWaitMs(): number {
  const v = Number(process.env.CLONEBOX_LOCK_WAIT_MS);
  return Number.isFinite(v) && v >= 0 ? v : 5000;
}

/**
 * The holder in a lock file; null when there is none or it died on this host.
 * @public as EXCLUSIVE_LOCK.
 */
export async function liveHolder(file: string): Promise<LockHolder | null> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return null;
  }
  let h: LockHolder;
  try {
    h = JSON.parse(text) as LockHolder;
  } catch {
    // Being written right now (a holder writes its JSON right after creating the file): live.
    return { pid: 0, host: '?', command: '?', since: '?' };
  }
  if (h.host === os.hostname() && typeof h.pid === 'number' && !pidAlive(h.pid)) return null;
  return h;
}

export interface RepoLock {
  release(): Promise<void>;
}

/**
 * Removes shared lock files whose holder died on this host (a push killed with SIGKILL leaves its own).
 * A file without readable JSON (killed between creating and writing it) is judged by the pid in its name.
 */
async function clearDeadShared(repo: Repo): Promise<void> {
  const names = await readdir(repo.locksDir).catch(() => [] as string[]);
  for (const n of names) {
    if (!SHARED_LOCK_RE.test(n)) continue;
    const f = path.join(repo.locksDir, n);
    let h: Partial<LockHolder> | null = null;
    try {
      h = JSON.parse(await readFile(f, 'utf8')) as Partial<LockHolder>;
    } catch {
      h = null;
    }
    const dead = h && typeof h.pid === 'number' ? h.host === os.hostname() && !pidAlive(h.pid) : !pidAlive(Number(n.split('-')[1]));
    if (dead) await unlink(f).catch(() => undefined);
  }
}

/** Takes the shared side of the repository lock (push, import). */
export async function lockShared(repo: Repo, command: string): Promise<RepoLock> {
  const deadline = Date.now() + lockWaitMs();
  await clearDeadShared(repo);
  const excl = path.join(repo.locksDir, EXCLUSIVE_LOCK);
  const info: LockHolder = { pid: process.pid, host: os.hostname(), command, since: nowIso() };
  for (;;) {
    let holder = await liveHolder(excl);
    if (!holder) {
      const mine = path.join(repo.locksDir, `shared-${process.pid}-${randomBytes(4).toString('hex')}`);
      try {
        const fh = await open(mine, 'wx', 0o600);
        try {
          await fh.writeFile(JSON.stringify(info));
        } finally {
          await fh.close();
        }
      } catch (err) {
        throw ioError(err, 'cannot create archive lock', mine);
      }
      holder = await liveHolder(excl);
      if (!holder) {
        let released = false;
        return {
          release: async () => {
            if (released) return;
            released = true;
            await unlink(mine).catch(() => undefined);
          },
        };
      }
      await unlink(mine).catch(() => undefined);
    }
    if (Date.now() >= deadline) {
      throw new CloneboxError('ARCHIVE_BUSY', `the archive repository is locked, ${repo.dir}`, {
        hint: `${holder.command} (pid ${holder.pid} on ${holder.host}) holds it since ${holder.since}; try again when it ends`,
      });
    }
    await new Promise((r) => setTimeout(r, 50 + Math.random() * 50));
  }
}
