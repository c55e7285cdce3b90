/**
 * Per-VM advisory lock: a file created with O_EXCL holding the owner's pid and host. A holder that died
 * (same host, pid gone) is taken over; a live holder makes us wait up to the timeout, then fail with
 * VM_BUSY. Locks are released on exit paths by the caller (try/finally).
 */
import { open, readFile, rename, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { checkAborted } from '../abort.js';
import { CloneboxError, ioError } from '../errors.js';
import { ensureDir, pidAlive, tempDone, tempPathFor } from '../fsutil.js';

interface LockInfo {
  pid: number;
  host: string;
  command: string;
  since: string;
}

export interface Lock {
  path: string;
  release(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Rounds without a live holder before giving up (each normally succeeds at once; see acquireLock). */
const MAX_RETRIES = 20;

function lockWaitMs(): number {
  const v = Number(process.env.CLONEBOX_LOCK_WAIT_MS);
  return Number.isFinite(v) && v >= 0 ? v : 5000;
}

export async function acquireLock(file: string, what: string, command: string, waitMs = lockWaitMs(), signal?: AbortSignal): Promise<Lock> {
  const deadline = Date.now() + waitMs;
  const info: LockInfo = { pid: process.pid, host: os.hostname(), command, since: new Date().toISOString() };
  // Rounds that did not wait for a live holder (a directory made again, a stale or unreadable lock
  // removed): each normally succeeds at once, so many in a row mean the file system refuses what we
  // do (`--home /proc` spun here forever, issue 17). Bounded, like the wait itself.
  let retries = 0;
  const retry = (err: unknown, what: string) => {
    if (++retries > MAX_RETRIES) throw ioError(err, what, file);
  };
  for (;;) {
    try {
      const fh = await open(file, 'wx', 0o644);
      await fh.writeFile(JSON.stringify(info));
      await fh.close();
      let released = false;
      return {
        path: file,
        release: async () => {
          if (released) return;
          released = true;
          await unlink(file).catch(() => undefined);
        },
      };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        // The VM directory was just removed by a failed create that released its lock: make it again
        // (a directory that cannot be made is the answer: fail with its error).
        retry(err, 'cannot create lock');
        await ensureDir(path.dirname(file));
        continue;
      }
      if (code !== 'EEXIST') throw ioError(err, 'cannot create lock', file);
    }
    let holder: LockInfo | null = null;
    try {
      holder = JSON.parse(await readFile(file, 'utf8')) as LockInfo;
    } catch {
      holder = null; // being written right now, or torn by a crash: judged again on the next round
    }
    if (holder && holder.host === os.hostname() && !pidAlive(holder.pid)) {
      // Take over atomically: move the stale file aside under a unique name, so two processes racing
      // for the same stale lock cannot both delete a fresh lock.
      retry(Object.assign(new Error(`a stale lock of pid ${holder.pid} cannot be removed`), { code: 'ESTALE' }), 'cannot take over lock');
      const aside = tempPathFor(file);
      try {
        await rename(file, aside);
        let moved: LockInfo | null = null;
        try {
          moved = JSON.parse(await readFile(aside, 'utf8')) as LockInfo;
        } catch {
          moved = null;
        }
        if (moved && moved.pid !== holder.pid) {
          // We moved a fresh lock by mistake: put it back if the slot is still free.
          await rename(aside, file).catch(() => undefined);
        }
        await unlink(aside).catch(() => undefined);
        tempDone(aside);
      } catch {
        tempDone(aside);
        /* someone else took it over first */
      }
      continue;
    }
    if (!holder) {
      // Unreadable lock file: a holder writes its JSON right after creating the file, so give it 100 ms;
      // still unreadable then (empty after a crash, or garbage) means no live holder: remove it.
      retry(Object.assign(new Error('an unreadable lock file cannot be removed'), { code: 'EBADLOCK' }), 'cannot take lock');
      await sleep(100);
      try {
        JSON.parse(await readFile(file, 'utf8'));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') await unlink(file).catch(() => undefined);
      }
      continue;
    }
    // Waiting for another holder is a point where stopping leaves nothing behind.
    checkAborted(signal);
    if (Date.now() >= deadline) {
      throw new CloneboxError('VM_BUSY', `VM is busy, ${what}`, {
        hint: `${holder.command} (pid ${holder.pid} on ${holder.host}) holds it since ${holder.since}; try again when it ends`,
      });
    }
    await sleep(50 + Math.random() * 50);
  }
}
