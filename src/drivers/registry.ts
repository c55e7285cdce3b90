/**
 * The drivers this build has, by the name a VM record carries: the snapshot driver of a VM, and the
 * handlers of the driver steps an operation journal may hold (store/journal.ts names no driver; every
 * caller that begins or recovers an operation passes `driverStepHandlers`).
 *
 * Drivers are loaded on first use, so that importing the registry costs nothing to a command that
 * never snapshots (`vm list` recovers journals through it). The libvirt driver in particular brings the
 * XML parser and the virsh plumbing, which image-only commands never need.
 */
import { CloneboxError } from '../errors.js';
import type { StepHandler, StepHandlers } from '../store/journal.js';
import type { VmRecord } from '../store/registry.js';
import type { SnapshotDriver } from './driver.js';

export const driverStepHandlers: StepHandlers = new Map<string, () => Promise<StepHandler>>([
  ['libvirt', async () => (await import('./libvirt/driver.js')).libvirtStepHandler],
]);

export async function driverFor(vm: VmRecord): Promise<SnapshotDriver> {
  if (vm.driver === 'image') {
    const { ImageDriver } = await import('./image.js');
    return new ImageDriver();
  }
  if (vm.driver === 'libvirt') {
    const { LibvirtDriver } = await import('./libvirt/driver.js');
    return new LibvirtDriver();
  }
  throw new CloneboxError('UNSUPPORTED', `the ${vm.driver} driver is not available in this version, ${vm.name}`);
}
