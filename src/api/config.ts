/**
 * `cb.config`: the `.clonebox.yaml` of a VM (the work is in src/snapshots/config-file.ts and
 * auto-config.ts). check validates a file, apply makes a VM match it (registering the VM when the
 * file says where its disks are), show gives a VM's effective configuration in the same schema.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { CloneboxError } from '../errors.js';
import type { SnapshotManager } from '../snapshots/manager.js';
import type { AutoSettings } from '../snapshots/settings.js';
import type { VmRecord } from '../store/registry.js';
import type { Session } from './session.js';
import type { ConfigApplyResult, ConfigCheckResult, EffectiveConfig, WarningOptions } from './types.js';

/** Whether a VM argument names a configuration instead: `.`, or anything with a path separator or a YAML extension. */
function namesConfig(arg: string): boolean {
  if (!(arg === '.' || arg === '..' || arg.includes('/') || /\.ya?ml$/i.test(arg))) return false;
  // Only an existing file, or a directory holding a .clonebox.yaml, is a configuration: anything else
  // stays a VM name, so `vm create ..` or `vm show a/b` get the name check's error, not "cannot read
  // the configuration".
  const st = statSync(arg, { throwIfNoEntry: false });
  if (!st) return false;
  return st.isDirectory() ? existsSync(path.join(arg, '.clonebox.yaml')) : true;
}

function effective(vm: VmRecord, s: AutoSettings): EffectiveConfig {
  return {
    vm: {
      name: vm.name,
      driver: vm.driver,
      ...(vm.driver === 'libvirt' && vm.libvirt ? { libvirt: { domain: vm.libvirt.domain, uri: vm.libvirt.uri } } : { disks: vm.disks.map((d) => d.path) }),
      snapshots: {
        auto_snapshot: { enabled: s.enabled, before_operations: s.before_operations, policy: s.policy },
        policies: Object.fromEntries(Object.entries(s.policies).map(([n, p]) => [n, { ...p.policy, when: p.when, timezone: p.timezone }])),
      },
    },
    source: s.source,
  };
}

export class Config {
  constructor(private readonly s: Session) {}

  private async manager(): Promise<SnapshotManager> {
    const { SnapshotManager } = await import('../snapshots/manager.js');
    return new SnapshotManager(this.s.home, this.s.warner(undefined, 'NOTICE'));
  }

  /** Validates a file (or a directory holding .clonebox.yaml) without touching any VM: CONFIG_INVALID lists every problem. */
  check(file: string): Promise<ConfigCheckResult> {
    return this.s.run(async () => {
      const spec = await (await import('../snapshots/config-file.js')).loadConfig(file);
      return { file: spec.file, vm: spec.vm.name, policies: Object.keys(spec.policies), groups: spec.groups.map((g) => g.name) };
    });
  }

  /**
   * Makes the file's VM match it: registers the VM when it is not and the file names its disks or
   * libvirt domain, then replaces its automatic-snapshot settings. Idempotent: `changed` is false
   * when the VM already had them.
   */
  apply(file: string, opts: WarningOptions = {}): Promise<ConfigApplyResult> {
    return this.s.run(async () => {
      const { loadConfig } = await import('../snapshots/config-file.js');
      const spec = await loadConfig(file);
      const { vmExists, loadVm } = await import('../store/registry.js');
      let registered = false;
      if (!(await vmExists(this.s.home, spec.vm.name))) {
        const vms = await import('../vms.js');
        if (spec.vm.disks) {
          await vms.addVm(this.s.home, spec.vm.name, spec.vm.disks);
        } else if (spec.vm.libvirt) {
          const r = await vms.addLibvirtVm(this.s.home, spec.vm.name, spec.vm.libvirt.domain, spec.vm.libvirt.uri);
          r.warnings.forEach(this.s.warner(opts.onWarning));
        } else {
          throw CloneboxError.CONFIG_INVALID(`${spec.vm.at}: VM ${spec.vm.name} is not registered and the file does not say where its disks are`, {
            hint: `add vm.disks (qcow2 paths) or vm.libvirt (a domain) to ${spec.file}, or register it first with \`clonebox vm add\``,
          });
        }
        registered = true;
      } else if (spec.vm.disks) {
        const vm = await loadVm(this.s.home, spec.vm.name);
        const have = vm.disks.map((d) => d.path);
        if (JSON.stringify(have) !== JSON.stringify(spec.vm.disks)) {
          this.s.warner(opts.onWarning)(`VM ${vm.name} is registered with ${have.join(', ')}; the file's vm.disks are not used (they only register a new VM)`);
        }
      }
      const { applySpec } = await import('../snapshots/auto-config.js');
      const mgr = await this.manager();
      const r = await applySpec(mgr, spec);
      const vm = await loadVm(this.s.home, spec.vm.name);
      // Every group's members are checked before any group is written: a file applies its groups whole.
      const missing: string[] = [];
      for (const g of spec.groups) {
        for (const m of g.members) if (!(await vmExists(this.s.home, m))) missing.push(`${g.membersAt}: VM ${m} of group ${g.name} is not registered`);
      }
      if (missing.length > 0) {
        throw CloneboxError.CONFIG_INVALID(`${spec.file}: ${missing.length === 1 ? 'a problem' : `${missing.length} problems`}\n${missing.join('\n')}`, {
          hint: 'register the VMs first (`clonebox vm add`, or apply their own .clonebox.yaml), or leave them out of the group',
        });
      }
      const groups = [];
      if (spec.groups.length > 0) {
        const { GroupManager } = await import('../snapshots/groups.js');
        const gm = new GroupManager(this.s.home, mgr);
        for (const g of spec.groups) groups.push(await gm.applyConfig(g, spec.file));
      }
      return {
        file: spec.file,
        vm: vm.name,
        registered,
        changed: r.changed || registered || groups.some((g) => g.changed),
        config: effective(vm, r.settings),
        groups,
      };
    });
  }

  /** The VM's effective configuration, in the file's schema. */
  show(vm: string): Promise<EffectiveConfig> {
    return this.s.run(async () => {
      const { autoSettingsOf } = await import('../snapshots/settings.js');
      return (await this.manager()).read(vm, async (rec) => effective(rec, autoSettingsOf(rec)));
    });
  }

  /**
   * The VM a command-line VM argument names: `.` (the .clonebox.yaml here), a directory holding one,
   * or a path to one names the VM that file describes; anything else is a VM name, returned as is.
   */
  resolveVm(arg: string): Promise<string> {
    if (!namesConfig(arg)) return Promise.resolve(arg);
    return this.s.run(async () => (await (await import('../snapshots/config-file.js')).loadConfig(arg)).vm.name);
  }
}
