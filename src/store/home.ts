/**
 * The state directory ("home"): one per workstation, chosen by --home, CLONEBOX_HOME or ~/.clonebox.
 *
 *   <home>/vms/<vm>/vm.json          the VM's registry record (written atomically)
 *   <home>/vms/<vm>/snapshots/*.json one record per snapshot
 *   <home>/vms/<vm>/journal.json     the multi-step operation in progress, if any
 *   <home>/vms/<vm>/lock             held while a command changes the VM
 *   <home>/disks/                    default directory for `vm create` images
 *
 * The home holds what others must not read (layers' block maps, team secrets, identity and catalog
 * keys), so it is a directory only its owner can enter: created 0700, and tightened when found looser.
 */
import { chmod, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ensurePrivateDir } from '../fsutil.js';

export interface Home {
  root: string;
  vmsDir: string;
  disksDir: string;
}

export function resolveHome(explicit?: string): Home {
  const root = path.resolve(explicit ?? process.env.CLONEBOX_HOME ?? path.join(os.homedir(), '.clonebox'));
  return { root, vmsDir: path.join(root, 'vms'), disksDir: path.join(root, 'disks') };
}

export function vmDir(home: Home, vm: string): string {
  return path.join(home.vmsDir, vm);
}

/** Creates the home (0700) before the first thing is written in it; tightens it when it is looser. */
export async function ensureHome(home: Home): Promise<void> {
  await ensurePrivateDir(home.root);
}

/**
 * When the home exists with group or other permission bits, takes them away and returns a warning to
 * show (its content may have been read meanwhile); null otherwise. A home that does not exist yet is
 * left alone: opening one creates nothing.
 */
export async function tightenHome(home: Home): Promise<string | null> {
  let mode: number;
  try {
    const st = await stat(home.root);
    if (!st.isDirectory()) return null;
    mode = st.mode & 0o777;
  } catch {
    return null;
  }
  if ((mode & 0o077) === 0) return null;
  try {
    await chmod(home.root, mode & 0o700);
  } catch {
    return `the home ${home.root} can be read by others (mode ${mode.toString(8).padStart(4, '0')}) and could not be restricted: run \`chmod 700 ${home.root}\``;
  }
  return `the home ${home.root} could be read by others (mode ${mode.toString(8).padStart(4, '0')}); restricted it to its owner (0700). Layers, maps and keys in it may have been read.`;
}
