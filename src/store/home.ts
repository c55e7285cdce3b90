/**
 * The state directory ("home"): one per workstation, chosen by --home, CLONEBOX_HOME or ~/.clonebox.
 *
 *   <home>/vms/<vm>/vm.json          the VM's registry record (written atomically)
 *   <home>/vms/<vm>/snapshots/*.json one record per snapshot
 *   <home>/vms/<vm>/journal.json     the multi-step operation in progress, if any
 *   <home>/vms/<vm>/lock             held while a command changes the VM
 *   <home>/disks/                    default directory for `vm create` images
 *   <home>/groups/<group>/           a VM group: group.json, snapshots/*.json, journal.json, lock
 *                                    (store/groups.ts, docs/groups.md)
 *
 * The home holds what others must not read (layers' block maps, team secrets, identity and catalog
 * keys), so it is a directory only its owner can enter: created 0700, and tightened when found looser
 * (when it holds only clonebox's own entries).
 */
import { chmod, readdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ensureDir } from '../fsutil.js';

export interface Home {
  root: string;
  vmsDir: string;
  disksDir: string;
  groupsDir: string;
}

export function resolveHome(explicit?: string): Home {
  const root = path.resolve(explicit ?? process.env.CLONEBOX_HOME ?? path.join(os.homedir(), '.clonebox'));
  return { root, vmsDir: path.join(root, 'vms'), disksDir: path.join(root, 'disks'), groupsDir: path.join(root, 'groups') };
}

export function vmDir(home: Home, vm: string): string {
  return path.join(home.vmsDir, vm);
}

export function groupDir(home: Home, group: string): string {
  return path.join(home.groupsDir, group);
}

/** What clonebox keeps at the top of a home: a directory holding anything else is not only ours. */
// Everything clonebox itself puts at the top of a home (the event log and its rotated copy, the
// scheduler's lock, the service's accounts and certificate): a home holding only these is ours to chmod.
const HOME_ENTRIES = new Set(['vms', 'disks', 'teams', 'identity', 'sync', 'groups', 'events.log', 'events.log.1', 'schedule.lock', 'serve']);

/** Creates the home (0700, with any missing parents) before the first thing is written in it. */
export async function ensureHome(home: Home): Promise<void> {
  await ensureDir(home.root, 0o700);
}

/**
 * When the home exists with group or other permission bits, takes them away and returns a warning to
 * show (its content may have been read meanwhile); null when it is private. Only a directory that
 * holds nothing but what clonebox puts in a home is changed: `--home` may name a directory that is
 * also something else (`~`, or `/` as root), whose mode is not ours to change; then the warning only
 * says so. A home that does not exist yet is left alone: opening one creates nothing.
 */
export async function tightenHome(home: Home): Promise<string | null> {
  let mode: number;
  let entries: string[];
  try {
    const st = await stat(home.root);
    if (!st.isDirectory()) return null;
    mode = st.mode & 0o777;
    if ((mode & 0o077) === 0) return null;
    entries = await readdir(home.root);
  } catch {
    return null;
  }
  const shown = mode.toString(8).padStart(4, '0');
  if (!entries.every((e) => HOME_ENTRIES.has(e))) {
    return `the home ${home.root} can be read by others (mode ${shown}) and holds more than clonebox's files, so it was left as it is: use a home of its own, or \`chmod 700 ${home.root}\``;
  }
  try {
    await chmod(home.root, mode & 0o700);
  } catch {
    return `the home ${home.root} can be read by others (mode ${shown}) and could not be restricted: run \`chmod 700 ${home.root}\``;
  }
  return `the home ${home.root} could be read by others (mode ${shown}); restricted it to its owner (0700). Layers, maps and keys in it may have been read.`;
}
