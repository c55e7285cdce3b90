/**
 * The state directory ("home"): one per workstation, chosen by --home, CLONEBOX_HOME or ~/.clonebox.
 *
 *   <home>/vms/<vm>/vm.json          the VM's registry record (written atomically)
 *   <home>/vms/<vm>/snapshots/*.json one record per snapshot
 *   <home>/vms/<vm>/journal.json     the multi-step operation in progress, if any
 *   <home>/vms/<vm>/lock             held while a command changes the VM
 *   <home>/disks/                    default directory for `vm create` images
 */
import os from 'node:os';
import path from 'node:path';

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
