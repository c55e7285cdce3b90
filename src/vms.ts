/** VM lifecycle on the registry: create, add, show, list, remove (image driver; libvirt comes later). */
import { realpath, rmdir, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { nowIso } from './clock.js';
import { driverStepHandlers } from './drivers/registry.js';
import { CloneboxError, ioError } from './errors.js';
import { ensureDir, pathExists } from './fsutil.js';
import { checkName } from './names.js';
import { type ChainLink, checkedBackingChain } from './qcow2/backing.js';
import { Qcow2Image } from './qcow2/reader.js';
import { Qcow2Writer } from './qcow2/writer.js';
import type { LeftGroup } from './snapshots/groups.js';
import { lockGroup } from './store/groups.js';
import type { Home } from './store/home.js';
import { recover } from './store/journal.js';
import type { Lock } from './store/lock.js';
import { checkNotPinned } from './store/pins.js';
import { diskTarget, findDiskOwner, listVmNames, loadVm, lockVm, removeVmDir, saveVm, type VmRecord, vmExists } from './store/registry.js';
import { listSnapshotNames, listSnapshotRecords } from './store/snapshots.js';

export interface DiskView {
  target: string;
  path: string;
  virtual_size: number;
  /** `vm add` only: the disk's backing chain as checked, top first (qcow2/backing.ts). */
  backing_chain?: ChainLink[];
}

export interface VmView {
  name: string;
  driver: 'image' | 'libvirt';
  current: string | null;
  snapshot_count: number;
  disks: DiskView[];
}

export async function vmView(home: Home, rec: VmRecord): Promise<VmView> {
  const disks: DiskView[] = [];
  for (const d of rec.disks) {
    let virtualSize = 0;
    try {
      const img = await Qcow2Image.open(d.path);
      virtualSize = img.virtualSize;
      await img.close();
    } catch (err) {
      if (!(err instanceof CloneboxError && err.code === 'IO')) throw err;
      throw new CloneboxError('DISK_NOT_FOUND', `disk ${d.target} of VM ${rec.name} is missing, ${d.path}`, {
        hint: 'restore the file, or unregister the VM with `clonebox vm remove`',
      });
    }
    disks.push({ target: d.target, path: d.path, virtual_size: virtualSize });
  }
  const count = (await listSnapshotNames(home, rec.name)).length;
  return { name: rec.name, driver: rec.driver, current: rec.current, snapshot_count: count, disks };
}

export async function createVm(home: Home, name: string, opts: { size: number; dir?: string; clusterSize?: number }): Promise<VmView> {
  checkName('VM', name);
  const lock = await lockVm(home, name, 'vm create');
  try {
    if (await vmExists(home, name)) throw new CloneboxError('VM_EXISTS', `VM already exists, ${name}`);
    const wanted = path.resolve(opts.dir ?? path.join(home.disksDir, name));
    const createdDir = !(await pathExists(wanted));
    await ensureDir(wanted);
    // The disk is registered under its real path (no symlinks), as `vm add` registers disks: otherwise
    // the same file reached through a symlinked directory would not be recognised as in use.
    const dir = await realpath(wanted);
    const disk = path.join(dir, `${name}.qcow2`);
    try {
      if (await pathExists(disk)) {
        throw new CloneboxError('VM_EXISTS', `disk file already exists, ${disk}`, { hint: 'use `clonebox vm add` to register it, or pick another --dir' });
      }
      // Sizes are rounded up to whole 512-byte sectors, as qemu-img does.
      const size = Math.ceil(opts.size / 512) * 512;
      const w = await Qcow2Writer.create(disk, { virtualSize: size, clusterSize: opts.clusterSize ?? 65536, mode: 0o600 });
      await w.finish();
    } catch (err) {
      // A failed create leaves nothing behind: not even the (still empty) directory it made.
      if (createdDir) await rmdir(wanted).catch(() => undefined);
      throw err;
    }
    const rec: VmRecord = {
      format: 1,
      name,
      driver: 'image',
      created_at: nowIso(),
      disks: [{ target: 'vda', path: disk }],
      current: null,
    };
    try {
      await saveVm(home, rec);
    } catch (err) {
      await unlink(disk).catch(() => undefined);
      throw err;
    }
    return await vmView(home, rec);
  } finally {
    await lock.release();
  }
}

/**
 * Registers existing qcow2 files as an image-driver VM. Each disk's backing chain must pass the rules
 * of qcow2/backing.ts (inside the disk's directory, regular files, recorded formats) unless the user
 * names the backing file in `allowBacking`; the chains are part of the result.
 */
export async function addVm(home: Home, name: string, diskPaths: string[], allowBacking: readonly string[] = []): Promise<VmView> {
  checkName('VM', name);
  if (diskPaths.length === 0) throw new CloneboxError('USAGE', 'vm add needs --disk PATH (or --libvirt)');
  const lock = await lockVm(home, name, 'vm add');
  try {
    if (await vmExists(home, name)) throw new CloneboxError('VM_EXISTS', `VM already exists, ${name}`);
    const disks: { target: string; path: string }[] = [];
    const seen = new Set<string>();
    const chains = new Map<string, ChainLink[]>();
    for (const [i, p] of diskPaths.entries()) {
      let abs: string;
      try {
        abs = await realpath(path.resolve(p));
      } catch (err) {
        throw ioError(err, 'cannot register disk', path.resolve(p));
      }
      if (seen.has(abs)) throw new CloneboxError('USAGE', `the same disk is given twice, ${abs}`);
      seen.add(abs);
      const img = await Qcow2Image.open(abs); // refuses non-qcow2 and unsupported features with a clear error
      try {
        // Every table entry judged against the file (metadata only, no data read): an image cut short
        // is QCOW2_TRUNCATED now, not a VM whose snapshots fail later (issue 17).
        for await (const _run of img.runs()) {
          /* the walk itself checks */
        }
      } finally {
        await img.close();
      }
      chains.set(abs, await checkedBackingChain(abs, allowBacking));
      const owner = await findDiskOwner(home, abs, name);
      if (owner) throw new CloneboxError('DISK_IN_USE', `disk is already registered to VM ${owner}, ${abs}`);
      const { layerPathFor } = await import('./drivers/image.js');
      const clash = disks.find((d) => layerPathFor(d.path, 'x') === layerPathFor(abs, 'x'));
      if (clash) {
        throw new CloneboxError('DISK_NAME_CLASH', `disks ${clash.path} and ${abs} differ only in their extension; their snapshot layers would collide`, {
          hint: 'rename one of the files so that their names differ before the extension',
        });
      }
      disks.push({ target: diskTarget(i), path: abs });
    }
    const accepted = [...chains.values()].flatMap((c) => c.flatMap((l, i) => (l.allowed_because !== null && c[i + 1] ? [c[i + 1]!.path] : [])));
    const rec: VmRecord = {
      format: 1,
      name,
      driver: 'image',
      created_at: nowIso(),
      disks,
      current: null,
      ...(accepted.length ? { allowed_backing: [...new Set(accepted)].sort() } : {}),
    };
    await saveVm(home, rec);
    const view = await vmView(home, rec);
    for (const d of view.disks) d.backing_chain = chains.get(d.path) ?? [];
    return view;
  } finally {
    await lock.release();
  }
}

/** Registers a libvirt domain: its writable qcow2 disks become the VM's disks (libvirt driver). */
export async function addLibvirtVm(home: Home, name: string, domain: string, uri: string): Promise<{ view: VmView; warnings: string[] }> {
  checkName('VM', name);
  const { inspectDomain } = await import('./drivers/libvirt/driver.js');
  const lock = await lockVm(home, name, 'vm add');
  try {
    if (await vmExists(home, name)) throw new CloneboxError('VM_EXISTS', `VM already exists, ${name}`);
    const ins = await inspectDomain(domain, uri);
    for (const d of ins.disks) {
      const owner = await findDiskOwner(home, d.path, name);
      if (owner) throw new CloneboxError('DISK_IN_USE', `disk is already registered to VM ${owner}, ${d.path}`);
    }
    const rec: VmRecord = {
      format: 1,
      name,
      driver: 'libvirt',
      created_at: nowIso(),
      disks: ins.disks.map((d) => ({ target: d.target, path: d.path })),
      current: null,
      libvirt: { domain, uri },
    };
    await saveVm(home, rec);
    return { view: await vmView(home, rec), warnings: ins.warnings };
  } finally {
    await lock.release();
  }
}

export async function listVms(home: Home): Promise<VmView[]> {
  const out: VmView[] = [];
  for (const n of await listVmNames(home)) {
    const rec = await loadVm(home, n);
    try {
      out.push(await vmView(home, rec));
    } catch (err) {
      if (!(err instanceof CloneboxError && err.code === 'DISK_NOT_FOUND')) throw err;
      out.push({ name: rec.name, driver: rec.driver, current: rec.current, snapshot_count: 0, disks: rec.disks.map((d) => ({ ...d, virtual_size: 0 })) });
    }
  }
  return out;
}

export async function showVm(home: Home, name: string): Promise<VmView> {
  checkName('VM', name);
  return vmView(home, await loadVm(home, name));
}

/**
 * Unregisters a VM. With deleteFiles, its disks and every snapshot layer are deleted too: the record
 * goes first so that a crash mid-way leaves unreferenced files, never a VM pointing at missing ones.
 */
/**
 * Unregisters the VM (and with `deleteFiles` deletes its files). A VM that a group names (as a member
 * or in a group snapshot) is refused with VM_IN_GROUP unless `leaveGroups`: then it is taken out of
 * those groups and their group snapshots in the same journaled operation (GroupManager), so no group
 * record is left naming a VM or a snapshot that no longer exists. Lock order: the groups' locks
 * (sorted), then the VM's.
 */
export async function removeVm(
  home: Home,
  name: string,
  deleteFiles: boolean,
  leaveGroups = false,
): Promise<{ name: string; deleted_files: string[]; left_groups: LeftGroup[] }> {
  checkName('VM', name);
  await loadVm(home, name); // a clear VM_NOT_FOUND before any lock file is made
  const { GroupManager, inGroupError } = await import('./snapshots/groups.js');
  const { SnapshotManager } = await import('./snapshots/manager.js');
  const groups = new GroupManager(home, new SnapshotManager(home));
  const ties = await groups.tiesOf(name);
  if (ties.length > 0 && !leaveGroups) throw inGroupError(name, ties);
  const glocks: Lock[] = [];
  const deleted: string[] = [];
  try {
    for (const t of ties) glocks.push(await lockGroup(home, t.group, 'vm remove'));
    const lock = await lockVm(home, name, 'vm remove');
    try {
      // Finish or undo an interrupted operation first, so the files listed below are the real ones.
      await recover(home, name, driverStepHandlers);
      const rec = await loadVm(home, name);
      const now = await groups.tiesOf(name, true);
      const unlocked = now.find((t) => !ties.some((x) => x.group === t.group));
      if (unlocked) {
        throw CloneboxError.VM_BUSY(`group ${unlocked.group} took VM ${name} in while it was being removed`, { hint: 'run the command again' });
      }
      if (now.length > 0 && !leaveGroups) throw inGroupError(name, now);
      const snaps = await listSnapshotRecords(home, name);
      await checkNotPinned(home, name, null, 'removing the VM');
      if (deleteFiles && rec.driver === 'libvirt' && rec.libvirt) {
        const { checkDomainStopped } = await import('./drivers/libvirt/driver.js');
        await checkDomainStopped(rec.libvirt.domain, rec.libvirt.uri, `cannot delete the files of VM ${name}`);
      }
      const left = now.length > 0 ? await groups.leaveAndUnregister(name, now) : [];
      await removeVmDir(home, name);
      if (deleteFiles) {
        // Disks, layers, and the memory state of full snapshots (`<disk>@<snapshot>.mem`).
        const files = [...rec.disks.map((d) => d.path), ...snaps.flatMap((s) => [...s.disks.map((d) => d.path), ...(s.memory_path ? [s.memory_path] : [])])];
        for (const f of files) {
          try {
            await unlink(f);
            deleted.push(f);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(err, 'cannot delete', f);
          }
        }
      }
      return { name, deleted_files: deleted, left_groups: left };
    } finally {
      await lock.release();
    }
  } finally {
    for (const l of glocks.reverse()) await l.release();
  }
}

/**
 * The space a VM's files take on disk: its current images, every snapshot layer and memory file
 * (allocated blocks, so sparse images count what they hold). Files that are missing count 0.
 */
export async function vmDiskUsage(home: Home, name: string): Promise<number> {
  checkName('VM', name);
  const rec = await loadVm(home, name);
  const files = new Set(rec.disks.map((d) => d.path));
  for (const s of await listSnapshotRecords(home, name)) {
    for (const l of s.disks) files.add(l.path);
    if (s.memory_path) files.add(s.memory_path);
  }
  let bytes = 0;
  for (const f of files) {
    const st = await stat(f).catch(() => null);
    if (st) bytes += st.blocks * 512;
  }
  return bytes;
}

/**
 * The power state of a libvirt VM's domain, as `virsh domstate` says it; null for image-driver VMs,
 * which never run.
 */
export async function vmPowerState(
  home: Home,
  name: string,
): Promise<'running' | 'idle' | 'paused' | 'in shutdown' | 'shut off' | 'crashed' | 'pmsuspended' | 'unknown' | null> {
  checkName('VM', name);
  const rec = await loadVm(home, name);
  if (rec.driver !== 'libvirt' || !rec.libvirt) return null;
  const { Virsh } = await import('./drivers/libvirt/virsh.js');
  return new Virsh({ uri: rec.libvirt.uri }).state(rec.libvirt.domain);
}

/** A libvirt domain's current memory in bytes (what a full snapshot saves); null for image-driver VMs. */
export async function vmMemoryBytes(home: Home, name: string): Promise<number | null> {
  checkName('VM', name);
  const rec = await loadVm(home, name);
  if (rec.driver !== 'libvirt' || !rec.libvirt) return null;
  const { Virsh } = await import('./drivers/libvirt/virsh.js');
  return new Virsh({ uri: rec.libvirt.uri }).memoryBytes(rec.libvirt.domain);
}
