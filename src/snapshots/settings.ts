/**
 * A VM's automatic-snapshot settings as its record keeps them (`vm.json` → `extra`): the default
 * retention policy (`snapshot policy`, or `auto_snapshot.policy` of a .clonebox.yaml), the named
 * policies with their schedules, and the operations that take a snapshot first. Pure functions over
 * the record; the manager and the scheduler read them, `config apply` writes them.
 */
import type { VmRecord } from '../store/registry.js';
import type { Policy } from './policy.js';

/** A named policy: its own retention over the snapshots it made, and when it runs. */
export interface NamedPolicy {
  policy: Policy;
  /** Cron expressions (a daily "HH:MM" is stored as its cron form); empty: never scheduled. */
  when: string[];
  /** IANA time zone the expressions are read in; null: the local time zone. */
  timezone: string | null;
  /** When the schedule was first set: the first run is the first time due after it. */
  since: string;
}

export interface AutoSettings {
  /** False: no scheduled and no before-operation snapshots (retention still applies). */
  enabled: boolean;
  /** Retention of auto snapshots that no named policy made. */
  policy: Policy;
  policies: Record<string, NamedPolicy>;
  /** Operations that take an auto snapshot first (delete, restore, import, sync, config-change, or a `snapshot run --op` name). */
  before_operations: string[];
  /** The .clonebox.yaml that last changed the settings (absolute), or null. */
  source: string | null;
}

/** What holds automatic-snapshot settings: a VM's record, or a group's (store/groups.ts, same keys in `extra`). */
type Holder = Pick<VmRecord, 'extra'>;

export function policyOf(vm: Holder): Policy {
  return (vm.extra?.policy as Policy | undefined) ?? {};
}

export function namedPoliciesOf(vm: Holder): Record<string, NamedPolicy> {
  return (vm.extra?.policies as Record<string, NamedPolicy> | undefined) ?? {};
}

export function autoSettingsOf(vm: Holder): AutoSettings {
  return {
    enabled: vm.extra?.auto_enabled !== false,
    policy: policyOf(vm),
    policies: namedPoliciesOf(vm),
    before_operations: (vm.extra?.before_operations as string[] | undefined) ?? [],
    source: (vm.extra?.config_source as string | undefined) ?? null,
  };
}

/** The record with these settings (undefined parts left as they are). */
export function withAutoSettings<T extends Holder>(vm: T, s: Partial<AutoSettings>): T {
  const extra: Record<string, unknown> = { ...(vm.extra ?? {}) };
  if (s.enabled !== undefined) extra.auto_enabled = s.enabled;
  if (s.policy !== undefined) extra.policy = s.policy;
  if (s.policies !== undefined) extra.policies = s.policies;
  if (s.before_operations !== undefined) extra.before_operations = s.before_operations;
  if (s.source !== undefined) extra.config_source = s.source;
  return { ...vm, extra };
}

/** The auto_policy of a snapshot taken before operation `op` (never a named policy's: config-file.ts reserves the prefix). */
export function beforePolicy(op: string): string {
  return `before-${op}`;
}

/** Whether the VM's settings ask for an auto snapshot before operation `op`. */
export function snapshotsBefore(vm: VmRecord, op: string): boolean {
  const s = autoSettingsOf(vm);
  return s.enabled && s.before_operations.includes(op);
}

/** The retention that governs an auto snapshot: its named policy's when that still exists, else the VM's. */
export function retentionKey(vm: Holder, autoPolicy: string | null): string {
  return autoPolicy !== null && Object.hasOwn(namedPoliciesOf(vm), autoPolicy) ? autoPolicy : '';
}
