/**
 * Applying a validated .clonebox.yaml (config-file.ts) to a registered VM: the file's settings
 * replace the VM's automatic-snapshot settings, under the VM lock, in one atomic record write, and
 * only when they differ (so applying a file twice changes nothing the second time). A named policy
 * whose schedule is unchanged keeps the time it was first set, so re-applying never shifts its runs.
 */
import { nowIso } from '../clock.js';
import { writeJsonAtomic } from '../fsutil.js';
import { vmFile } from '../store/registry.js';
import type { ConfigSpec } from './config-file.js';
import type { SnapshotManager } from './manager.js';
import { canonicalPolicy } from './policy.js';
import { type AutoSettings, autoSettingsOf, type NamedPolicy, withAutoSettings } from './settings.js';

/**
 * The settings a file gives a VM (or a group: `src` is then one of its `groups:`), keeping `since` of
 * policies whose schedule did not change.
 */
export function settingsFromSpec(src: Pick<ConfigSpec, 'auto' | 'policies'>, file: string, old: AutoSettings): AutoSettings {
  const policies: Record<string, NamedPolicy> = {};
  for (const [name, p] of Object.entries(src.policies)) {
    const prev = old.policies[name];
    const same = prev && JSON.stringify(prev.when) === JSON.stringify(p.when) && prev.timezone === p.timezone;
    policies[name] = { policy: canonicalPolicy(p.policy), when: p.when, timezone: p.timezone, since: same ? prev.since : nowIso() };
  }
  return { enabled: src.auto.enabled, policy: canonicalPolicy(src.auto.policy), policies, before_operations: src.auto.before_operations, source: file };
}

/** Whether two settings say the same (which file said it is not a setting). */
export function sameSettings(a: AutoSettings, b: AutoSettings): boolean {
  return JSON.stringify({ ...a, source: null }) === JSON.stringify({ ...b, source: null });
}

/** Writes the file's settings into the VM's record; returns them and whether anything changed (`source` names the file that last changed them). */
export async function applySpec(mgr: SnapshotManager, spec: ConfigSpec): Promise<{ settings: AutoSettings; changed: boolean }> {
  return mgr.withVm(spec.vm.name, 'config apply', async (vm) => {
    const old = autoSettingsOf(vm);
    const settings = settingsFromSpec(spec, spec.file, old);
    // Which file said it is not a setting: the same settings from another file change nothing.
    if (sameSettings(settings, old)) return { settings: old, changed: false };
    await writeJsonAtomic(vmFile(mgr.home, vm.name), withAutoSettings(vm, settings));
    return { settings, changed: true };
  });
}
