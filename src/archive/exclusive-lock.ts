/**
 * The exclusive side of the repository lock (lock.ts has the protocol and the shared side): forget and
 * gc, the only operations that delete, hold it. The holder creates `locks/exclusive` with O_EXCL, then
 * waits until no live shared holder (a push or an import) is left. A push that starts meanwhile sees the
 * exclusive file and backs off (lockShared), so a gc is never starved by a stream of pushes, and a push
 * never runs beside a gc: a push that found a block in the index and so did not write it is done (its
 * record written) before gc marks, and a push that starts after gc sees only what gc kept.
 */
import { open, readdir, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { nowIso } from '../clock.js';
import { CloneboxError, ioError } from '../errors.js';
import { ensureDir } from '../fsutil.js';
import { EXCLUSIVE_LOCK, type LockHolder, liveHolder, type RepoLock, SHARED_LOCK_RE } from './lock.js';
import type { Repo } from './repo.js';

function lockWaitMs(): number {
  const v = Number(process.env.CLONEBOX_LOCK_WAIT_MS);
  return Number.isFinite(v) && v >= 0 ? v : 5000;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function busy(repo: Repo, h: LockHolder): CloneboxError {
  return new CloneboxError('ARCHIVE_BUSY', `the archive repository is locked, ${repo.dir}`, {
    hint: `${h.command} (pid ${h.pid} on ${h.host}) holds it since ${h.since}; try again when it ends`,
  });
}

/** A live shared holder other than us, or null. Shared files of dead processes are removed on the way. */
async function liveShared(repo: Repo): Promise<LockHolder | null> {
  let names: string[];
  try {
    names = await readdir(repo.locksDir);
  } catch (err) {
    throw ioError(err, 'cannot read archive locks', repo.locksDir);
  }
  for (const n of names) {
    if (!SHARED_LOCK_RE.test(n)) continue;
    const f = path.join(repo.locksDir, n);
    const h = await liveHolder(f);
    if (h) return h;
    await unlink(f).catch(() => undefined);
  }
  return null;
}

/** Takes the exclusive side of the repository lock (forget, gc). */
export async function lockExclusive(repo: Repo, command: string): Promise<RepoLock> {
  const deadline = Date.now() + lockWaitMs();
  const file = path.join(repo.locksDir, EXCLUSIVE_LOCK);
  const info: LockHolder = { pid: process.pid, host: os.hostname(), command, since: nowIso() };
  await ensureDir(repo.locksDir, 0o700);
  // 1. The exclusive file itself (another gc's, live, makes us wait; a dead one's is taken over).
  for (;;) {
    try {
      const fh = await open(file, 'wx', 0o600);
      try {
        await fh.writeFile(JSON.stringify(info));
      } finally {
        await fh.close();
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(err, 'cannot create archive lock', file);
    }
    const h = await liveHolder(file);
    if (!h) {
      await unlink(file).catch(() => undefined);
      continue;
    }
    if (Date.now() >= deadline) throw busy(repo, h);
    await sleep(50 + Math.random() * 50);
  }
  const release = async () => {
    await unlink(file).catch(() => undefined);
  };
  // 2. Wait for the pushes that were there first.
  try {
    for (;;) {
      const h = await liveShared(repo);
      if (!h) break;
      if (Date.now() >= deadline) throw busy(repo, h);
      await sleep(50 + Math.random() * 50);
    }
  } catch (err) {
    await release();
    throw err;
  }
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      await release();
    },
  };
}
