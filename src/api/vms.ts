/** `cb.vms`: register, create, inspect and remove VMs (the work is in src/vms.ts). */
import { parseSize } from '../names.js';
import type { Session } from './session.js';
import type { PowerState, VmCreateOptions, VmRemoveResult, VmView, WarningOptions } from './types.js';

const size = (v: number | string, what: string): number => (typeof v === 'number' ? v : parseSize(v, what));

export class Vms {
  constructor(private readonly s: Session) {}

  /** A new empty qcow2 disk, registered (image driver). */
  create(name: string, opts: VmCreateOptions): Promise<VmView> {
    return this.s.run(async () => {
      const bytes = size(opts.size, 'size');
      const clusterSize = opts.clusterSize === undefined ? undefined : size(opts.clusterSize, 'cluster size');
      const { createVm } = await import('../vms.js');
      return createVm(this.s.home, name, { size: bytes, ...(opts.dir ? { dir: opts.dir } : {}), ...(clusterSize ? { clusterSize } : {}) });
    });
  }

  /** Registers existing qcow2 disks. */
  add(name: string, opts: { disks: string[]; allowBacking?: string[] }): Promise<VmView> {
    return this.s.run(async () => {
      const { addVm } = await import('../vms.js');
      return addVm(this.s.home, name, opts.disks, opts.allowBacking ?? []);
    });
  }

  /** Registers a libvirt domain (default connection qemu:///system). */
  addLibvirt(name: string, opts: WarningOptions & { domain?: string; uri?: string } = {}): Promise<VmView> {
    return this.s.run(async () => {
      const { addLibvirtVm } = await import('../vms.js');
      const r = await addLibvirtVm(this.s.home, name, opts.domain ?? name, opts.uri ?? 'qemu:///system');
      r.warnings.forEach(this.s.warner(opts.onWarning));
      return r.view;
    });
  }

  list(): Promise<VmView[]> {
    return this.s.run(async () => (await import('../vms.js')).listVms(this.s.home), true);
  }

  /** Bytes the VM's files take on disk: current images, snapshot layers and memory files. */
  diskUsage(name: string): Promise<number> {
    return this.s.run(async () => (await import('../vms.js')).vmDiskUsage(this.s.home, name), true);
  }

  /** A libvirt domain's state ('running', 'shut off', ...); null for image-driver VMs. */
  powerState(name: string): Promise<PowerState | null> {
    return this.s.run(async () => (await import('../vms.js')).vmPowerState(this.s.home, name), true);
  }

  /** A libvirt domain's current memory in bytes (what a full snapshot saves); null for image-driver VMs. */
  memoryBytes(name: string): Promise<number | null> {
    return this.s.run(async () => (await import('../vms.js')).vmMemoryBytes(this.s.home, name), true);
  }

  show(name: string): Promise<VmView> {
    return this.s.run(async () => (await import('../vms.js')).showVm(this.s.home, name), true);
  }

  /**
   * Unregisters the VM; with deleteFiles also deletes its disks and layers. A VM that a group names
   * (member, or in a group snapshot) is refused (VM_IN_GROUP) unless leaveGroups: then it is also
   * taken out of those groups and their group snapshots.
   */
  remove(name: string, opts: { deleteFiles?: boolean; leaveGroups?: boolean } = {}): Promise<VmRemoveResult> {
    return this.s.run(async () => (await import('../vms.js')).removeVm(this.s.home, name, Boolean(opts.deleteFiles), Boolean(opts.leaveGroups)));
  }
}
