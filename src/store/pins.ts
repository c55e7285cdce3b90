/**
 * Pins: snapshots that an operation reads without holding the VM lock (an export), so that nothing
 * rewrites or deletes their layers meanwhile. Layers never change once made, except when a delete
 * merges or removes them; so an export takes the lock only to resolve its chain and pin it, and a
 * scheduled `snapshot create` can run during a long export (issue 17: it failed with VM_BUSY).
 *
 * A pin is a file `<home>/vms/<vm>/pins/<pid>-<n>.json` ({pid, host, command, since, snapshots}),
 * written atomically under the VM lock and removed when the reader ends. A delete (and prune, and
 * `vm remove`) judges pins under the VM lock: a pin of a live process, or of another host, holds; a
 * pin whose process died on this host is removed.
 */
import { readdir, readFile, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CloneboxError } from '../errors.js';
import { ensureDir, pidAlive, writeJsonAtomic } from '../fsutil.js';
import { type Home, vmDir } from './home.js';

interface PinInfo {
  pid: number;
  host: string;
  command: string;
  since: string;
  snapshots: string[];
}

export interface Pin {
  release(): Promise<void>;
}

let pinCounter = 0;

function pinsDir(home: Home, vm: string): string {
  return path.join(vmDir(home, vm), 'pins');
}

/** Pins `snapshots` of `vm` for `command`; the caller holds the VM lock. */
export async function pinSnapshots(home: Home, vm: string, snapshots: string[], command: string): Promise<Pin> {
  const dir = pinsDir(home, vm);
  await ensureDir(dir);
  const file = path.join(dir, `${process.pid}-${++pinCounter}.json`);
  const info: PinInfo = { pid: process.pid, host: os.hostname(), command, since: new Date().toISOString(), snapshots };
  // Atomic but not fsynced: a pin means something only while its process lives, and a crash of the
  // machine ends that process; one that survives a crash is stale and removed like any other.
  await writeJsonAtomic(file, info, 0o644, false);
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      await unlink(file).catch(() => undefined);
    },
  };
}

/** The live pins of `vm` (stale ones are removed on the way); the caller holds the VM lock. */
async function livePins(home: Home, vm: string): Promise<PinInfo[]> {
  const dir = pinsDir(home, vm);
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: PinInfo[] = [];
  for (const n of names) {
    if (!n.endsWith('.json') || n.startsWith('.')) continue;
    const file = path.join(dir, n);
    let p: PinInfo;
    try {
      p = JSON.parse(await readFile(file, 'utf8')) as PinInfo;
      if (!Number.isInteger(p.pid) || typeof p.host !== 'string' || !Array.isArray(p.snapshots)) throw new Error('unexpected shape');
    } catch {
      continue; // written atomically, so not ours or being removed: it pins nothing
    }
    if (p.host === os.hostname() && !pidAlive(p.pid)) {
      await unlink(file).catch(() => undefined);
      continue;
    }
    out.push(p);
  }
  return out;
}

/** Throws VM_BUSY when a live pin holds one of `names` (null: any snapshot of the VM). */
export async function checkNotPinned(home: Home, vm: string, names: Iterable<string> | null, what: string): Promise<void> {
  const wanted = names === null ? null : new Set(names);
  for (const p of await livePins(home, vm)) {
    const hit = wanted === null ? p.snapshots[0] : p.snapshots.find((s) => wanted.has(s));
    if (hit === undefined) continue;
    throw CloneboxError.VM_BUSY(`VM is busy, ${vm}: ${what} would change snapshot ${hit}, which ${p.command} is reading`, {
      hint: `${p.command} (pid ${p.pid} on ${p.host}) reads it since ${p.since}; try again when it ends`,
    });
  }
}

/** The names of `vm`'s snapshots that live pins hold. */
export async function pinnedSnapshots(home: Home, vm: string): Promise<Set<string>> {
  return new Set((await livePins(home, vm)).flatMap((p) => p.snapshots));
}
