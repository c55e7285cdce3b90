/**
 * The VM registry: one directory per VM under <home>/vms holding vm.json. A VM exists exactly when its
 * vm.json exists, and vm.json is only ever replaced atomically, so a crash never leaves half a VM.
 */
import { readdir, readFile, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { ensureDir, writeJsonAtomic } from '../fsutil.js';
import { closestName } from '../names.js';
import { ensureHome, type Home, vmDir } from './home.js';
import { acquireLock, type Lock } from './lock.js';

type DriverName = 'image' | 'libvirt';

interface DiskRecord {
  /** Guest device name: vda, vdb... */
  target: string;
  /** Absolute path of the image holding the VM's current writable state. */
  path: string;
}

export interface VmRecord {
  format: 1;
  name: string;
  driver: DriverName;
  created_at: string;
  disks: DiskRecord[];
  /** Name of the current snapshot (the parent of the writable state), or null. */
  current: string | null;
  libvirt?: { domain: string; uri: string };
  /**
   * Backing files outside the rules of qcow2/backing.ts that the user accepted at `vm add`
   * (`--allow-backing`, real paths): export checks an image-driver root's chain against them again.
   */
  allowed_backing?: string[];
  /** Free-form extra state owned by other modules (policies, sharing...), kept as is. */
  extra?: Record<string, unknown>;
}

export function vmFile(home: Home, vm: string): string {
  return path.join(vmDir(home, vm), 'vm.json');
}

export async function vmExists(home: Home, vm: string): Promise<boolean> {
  try {
    await readFile(vmFile(home, vm));
    return true;
  } catch {
    return false;
  }
}

export async function loadVm(home: Home, vm: string): Promise<VmRecord> {
  let text: string;
  try {
    text = await readFile(vmFile(home, vm), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      const near = closestName(vm, await listVmNames(home).catch(() => []));
      throw new CloneboxError('VM_NOT_FOUND', `no such VM, ${vm}`, {
        hint: near ? `did you mean ${near}?` : `see \`clonebox vm list --home ${home.root}\``,
      });
    }
    throw ioError(err, 'cannot read VM record', vmFile(home, vm));
  }
  try {
    const rec = JSON.parse(text) as VmRecord;
    if (rec.format !== 1 || rec.name !== vm || !Array.isArray(rec.disks)) throw new Error('unexpected shape');
    return rec;
  } catch (err) {
    throw new CloneboxError('STORE_CORRUPT', `VM record is damaged (${(err as Error).message}), ${vmFile(home, vm)}`);
  }
}

export async function saveVm(home: Home, rec: VmRecord): Promise<void> {
  await ensureDir(vmDir(home, rec.name));
  await writeJsonAtomic(vmFile(home, rec.name), rec);
}

export async function listVmNames(home: Home): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(home.vmsDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError(err, 'cannot list VMs', home.vmsDir);
  }
  const out: string[] = [];
  for (const n of names.sort()) if (!n.startsWith('.') && (await vmExists(home, n))) out.push(n);
  return out;
}

/** `signal` stops the wait for another holder (ABORTED). */
export async function lockVm(home: Home, vm: string, command: string, signal?: AbortSignal): Promise<Lock> {
  const dir = vmDir(home, vm);
  await ensureHome(home);
  await ensureDir(dir);
  const lock = await acquireLock(path.join(dir, 'lock'), vm, command, undefined, signal);
  return {
    path: lock.path,
    release: async () => {
      await lock.release();
      // A command that failed to create the VM leaves no trace: drop the directory if it is empty
      // (rmdir refuses otherwise, so a VM that exists, or one being made by another process, stays).
      await rmdir(dir).catch(() => undefined);
    },
  };
}

/** Which registered VM (other than `except`) already uses this image path, if any. */
export async function findDiskOwner(home: Home, diskPath: string, except?: string): Promise<string | null> {
  for (const n of await listVmNames(home)) {
    if (n === except) continue;
    const rec = await loadVm(home, n);
    if (rec.disks.some((d) => d.path === diskPath)) return n;
  }
  return null;
}

/** Removes the VM's registry directory (record, snapshots metadata, journal). */
export async function removeVmDir(home: Home, vm: string): Promise<void> {
  // vm.json goes first (atomically: the VM stops existing), the rest after.
  await rm(vmFile(home, vm), { force: true });
  await rm(vmDir(home, vm), { recursive: true, force: true });
}

export function diskTarget(i: number): string {
  // vda..vdz, then vdaa.. as libvirt names them
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  let n = i;
  let s = '';
  do {
    s = letters[n % 26] + s;
    n = Math.floor(n / 26) - 1;
  } while (n >= 0);
  return `vd${s}`;
}
