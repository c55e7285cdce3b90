/**
 * `.clonebox.yaml`: reading and validating the file that describes a VM and its automatic snapshots
 * (docs/policies.md has the schema). Every problem is collected with FILE:LINE:COLUMN and what is
 * allowed there, and reported together as one CONFIG_INVALID. The result is plain data; `config
 * apply` (src/api/config.ts) writes it into the VM's record. `yaml` loads with this module, which
 * only the commands that read a configuration file import.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, type Node, type Pair, parseDocument, type YAMLMap } from 'yaml';
import { CloneboxError, ioError } from '../errors.js';
import { NAME_RE, parseSize } from '../names.js';
import { type Policy, parseDuration, validatePolicy } from './policy.js';
import { checkTimezone, cronOf } from './schedule.js';

export const CONFIG_FILE = '.clonebox.yaml';

/** The operations `before_operations` knows by name; any other name is a `snapshot run --op NAME`. */
export const KNOWN_OPERATIONS = ['delete', 'restore', 'import', 'sync', 'config-change'] as const;

export interface ConfigPolicy {
  policy: Policy;
  /** Cron expressions (daily times already in cron form). */
  when: string[];
  timezone: string | null;
}

export interface ConfigSpec {
  /** Absolute path of the file. */
  file: string;
  vm: {
    name: string;
    /** Absolute disk paths, when the file says where they are. */
    disks: string[] | null;
    libvirt: { domain: string; uri: string } | null;
    /** FILE:LINE:COLUMN of `vm.name`, for errors about the VM itself. */
    at: string;
  };
  auto: { enabled: boolean; before_operations: string[]; policy: Policy };
  policies: Record<string, ConfigPolicy>;
  /** The groups the file names (`groups:`), in file order. */
  groups: ConfigGroup[];
}

/** The operations a group's `before_operations` may name: the group operations that change members. */
export const GROUP_OPERATIONS = ['restore', 'delete'] as const;

/** One entry of `groups:`: a group, its members and its automatic-snapshot settings (as `group policy` sets them). */
export interface ConfigGroup {
  name: string;
  /** Sorted, distinct VM names; at least one. */
  members: string[];
  /** Absent: left as the group has it (none for a new group). */
  description?: string | null;
  auto: { enabled: boolean; before_operations: string[]; policy: Policy };
  policies: Record<string, ConfigPolicy>;
  /** FILE:LINE:COLUMN of the group's `name` and of its `members`, for errors found when applying. */
  at: string;
  membersAt: string;
}

/** A path given for a configuration: the file itself, or a directory that holds `.clonebox.yaml`. */
export async function configPath(given: string): Promise<string> {
  const abs = path.resolve(given);
  try {
    return (await stat(abs)).isDirectory() ? path.join(abs, CONFIG_FILE) : abs;
  } catch (err) {
    throw ioError(err, 'cannot read the configuration', abs);
  }
}

export async function loadConfig(given: string): Promise<ConfigSpec> {
  const file = await configPath(given);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const e = ioError(err, 'cannot read the configuration', file);
    throw (err as NodeJS.ErrnoException).code === 'ENOENT'
      ? CloneboxError.IO(e.message, { hint: `write a ${CONFIG_FILE} (see docs/policies.md) or name the file` })
      : e;
  }
  return parseConfig(file, text);
}

const COUNT_KEYS = ['keep_last', 'keep_hourly', 'keep_daily', 'keep_weekly', 'keep_monthly', 'keep_yearly', 'max_snapshots'] as const;
const RETENTION_KEYS = [...COUNT_KEYS, 'keep_within', 'keep_for', 'max_size', 'max_size_gb', 'size_limit'] as const;
const NAMED_KEYS = [...RETENTION_KEYS, 'keep', 'when', 'timezone'] as const;

class Problems {
  readonly list: string[] = [];
  constructor(
    readonly file: string,
    private readonly lines: LineCounter,
  ) {}

  at(node: Node | Pair | null | undefined): string {
    const range = node && 'range' in node ? node.range : node && 'key' in node ? (node.key as Node | null)?.range : undefined;
    const pos = this.lines.linePos(range?.[0] ?? 0);
    return `${this.file}:${pos.line}:${pos.col}`;
  }

  add(node: Node | Pair | null | undefined, message: string): void {
    this.list.push(`${this.at(node)}: ${message}`);
  }
}

type Value = Node | null | undefined;

/** The pairs of a map with string keys; anything else is a problem (and yields nothing). */
function entries(p: Problems, node: Value, where: string, allowed: readonly string[]): Map<string, Pair<Node, Node | null>> {
  const out = new Map<string, Pair<Node, Node | null>>();
  if (!isMap(node)) {
    p.add(node, `${where} must be a mapping (keys: ${allowed.join(', ')})`);
    return out;
  }
  for (const pair of (node as YAMLMap<Node, Node | null>).items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : null;
    if (key === null || !allowed.includes(key)) {
      p.add(pair.key, `unknown key ${JSON.stringify(key ?? '?')} in ${where} (allowed: ${allowed.join(', ')})`);
      continue;
    }
    out.set(key, pair);
  }
  return out;
}

function str(p: Problems, node: Value, where: string): string | null {
  if (isScalar(node) && typeof node.value === 'string') return node.value;
  p.add(node, `${where} must be a string`);
  return null;
}

function strList(p: Problems, node: Value, where: string): string[] | null {
  if (isScalar(node) && typeof node.value === 'string') return [node.value];
  if (isSeq(node)) {
    const out: string[] = [];
    for (const item of node.items as Value[]) {
      const s = str(p, item, `each entry of ${where}`);
      if (s !== null) out.push(s);
    }
    return out;
  }
  p.add(node, `${where} must be a string or a list of strings`);
  return null;
}

/** Runs a check that throws a CloneboxError; its message becomes a problem at the node. */
function attempt<T>(p: Problems, node: Value, where: string, fn: () => T): T | null {
  try {
    return fn();
  } catch (err) {
    if (!(err instanceof CloneboxError)) throw err;
    p.add(node, `${where}: ${err.message}${err.hint ? ` (${err.hint})` : ''}`);
    return null;
  }
}

function count(p: Problems, node: Value, where: string): number | null {
  if (isScalar(node) && typeof node.value === 'number' && Number.isSafeInteger(node.value) && node.value >= 1) return node.value;
  p.add(node, `${where} must be a whole number of at least 1 (leave the key out for no such rule)`);
  return null;
}

function size(p: Problems, node: Value, where: string, unit = 1): number | null {
  if (isScalar(node) && typeof node.value === 'number' && node.value > 0 && Number.isFinite(node.value)) return Math.round(node.value * unit);
  if (isScalar(node) && typeof node.value === 'string' && unit === 1) {
    const n = attempt(p, node, where, () => parseSize(node.value as string, where));
    if (n !== null && n >= 1) return n;
    if (n !== null) p.add(node, `${where} must be at least 1 byte`);
    return null;
  }
  p.add(node, unit === 1 ? `${where} must be a size such as 10G or a number of bytes, above 0` : `${where} must be a number above 0`);
  return null;
}

function duration(p: Problems, node: Value, where: string): string | null {
  const s = str(p, node, `${where} (a duration such as 5d, 12h, 2w)`);
  if (s === null) return null;
  const ms = attempt(p, node, where, () => parseDuration(s));
  if (ms === 0) p.add(node, `${where} must be longer than 0`);
  return ms ? s : null;
}

function retention(p: Problems, pairs: Map<string, Pair<Node, Node | null>>, where: string): Policy {
  const out: Policy = {};
  for (const k of COUNT_KEYS) {
    const pair = pairs.get(k);
    if (!pair) continue;
    const n = count(p, pair.value, `${where}.${k}`);
    if (n !== null) out[k] = n;
  }
  for (const k of ['keep_within', 'keep_for'] as const) {
    const pair = pairs.get(k);
    if (!pair) continue;
    const d = duration(p, pair.value, `${where}.${k}`);
    if (d !== null) out[k] = d;
  }
  const sizes = (['max_size', 'max_size_gb', 'size_limit'] as const).filter((k) => pairs.has(k));
  if (sizes.length > 1) p.add(pairs.get(sizes[1]!)!, `${where}: ${sizes.join(' and ')} say the same thing; give one`);
  for (const k of sizes.slice(0, 1)) {
    const n = size(p, pairs.get(k)!.value, `${where}.${k}`, k === 'max_size_gb' ? 2 ** 30 : 1);
    if (n !== null) out.max_size = n;
  }
  return out;
}

export function parseConfig(file: string, text: string): ConfigSpec {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const p = new Problems(file, lines);
  if (doc.errors.length > 0) {
    for (const e of doc.errors) {
      const pos = lines.linePos(e.pos[0]);
      p.list.push(`${file}:${pos.line}:${pos.col}: YAML: ${e.message.split('\n')[0]}`);
    }
    throw invalid(p);
  }
  const root = doc.contents as Value;
  const top = entries(p, root, 'the file', ['vm', 'policies', 'groups']);
  const vmPair = top.get('vm');
  if (!vmPair) p.add(root, 'the file needs a `vm:` mapping with at least `name:`');
  const vm = vmPair ? entries(p, vmPair.value, 'vm', ['name', 'disks', 'libvirt', 'snapshots']) : new Map<string, Pair<Node, Node | null>>();
  const namePair = vm.get('name');
  let name = '';
  if (!namePair) {
    if (vmPair) p.add(vmPair, 'vm needs a `name:`');
  } else {
    name = str(p, namePair.value, 'vm.name') ?? '';
    if (name && (!NAME_RE.test(name) || name === '.' || name === '..')) {
      p.add(namePair.value, `vm.name ${JSON.stringify(name)} is not a VM name (letters, digits, ".", "_", "-"; at most 128)`);
    }
  }
  const base = path.dirname(file);
  let disks: string[] | null = null;
  const disksPair = vm.get('disks');
  if (disksPair) disks = strList(p, disksPair.value, 'vm.disks')?.map((d) => path.resolve(base, d)) ?? null;
  let libvirt: ConfigSpec['vm']['libvirt'] = null;
  const lvPair = vm.get('libvirt');
  if (lvPair) {
    if (isScalar(lvPair.value)) {
      const d = str(p, lvPair.value, 'vm.libvirt (a domain name)');
      if (d !== null) libvirt = { domain: d, uri: 'qemu:///system' };
    } else {
      const lv = entries(p, lvPair.value, 'vm.libvirt', ['domain', 'uri']);
      const domain = lv.get('domain') ? str(p, lv.get('domain')!.value, 'vm.libvirt.domain') : name;
      const uri = lv.get('uri') ? str(p, lv.get('uri')!.value, 'vm.libvirt.uri') : 'qemu:///system';
      if (domain && uri) libvirt = { domain, uri };
    }
  }
  if (disksPair && lvPair) p.add(lvPair, 'vm.disks and vm.libvirt exclude each other (a libvirt domain names its own disks)');

  const auto: ConfigSpec['auto'] = { enabled: true, before_operations: [], policy: {} };
  const policies: Record<string, ConfigPolicy> = {};
  const snaps = vm.get('snapshots') ? entries(p, vm.get('snapshots')!.value, 'vm.snapshots', ['auto_snapshot', 'policies']) : new Map();
  autoSnapshot(p, snaps.get('auto_snapshot'), 'vm.snapshots.auto_snapshot', auto, null);
  namedPolicies(p, policies, [
    ['policies', top.get('policies')],
    ['vm.snapshots.policies', snaps.get('policies')],
  ]);
  const groups = top.get('groups') ? parseGroups(p, top.get('groups')!.value) : [];
  if (p.list.length > 0) throw invalid(p);
  return { file, vm: { name, disks, libvirt, at: p.at(namePair?.value) }, auto, policies, groups };
}

/** `auto_snapshot:` of a VM (`allowedOps` null: any operation name) or of a group (only GROUP_OPERATIONS). */
function autoSnapshot(
  p: Problems,
  pair: Pair<Node, Node | null> | undefined,
  where: string,
  auto: ConfigSpec['auto'],
  allowedOps: readonly string[] | null,
): void {
  if (!pair) return;
  const a = entries(p, pair.value, where, ['enabled', 'before_operations', 'policy']);
  const en = a.get('enabled');
  if (en) {
    if (isScalar(en.value) && typeof en.value.value === 'boolean') auto.enabled = en.value.value;
    else p.add(en.value, `${where}.enabled must be true or false`);
  }
  const ops = a.get('before_operations');
  if (ops) {
    for (const op of strList(p, ops.value, `${where}.before_operations`) ?? []) {
      if (allowedOps !== null && !allowedOps.includes(op))
        p.add(ops.value, `operation ${JSON.stringify(op)} is not a group operation (a group takes its snapshot before: ${allowedOps.join(', ')})`);
      else if (!NAME_RE.test(op))
        p.add(ops.value, `operation ${JSON.stringify(op)} is not a name (known: ${KNOWN_OPERATIONS.join(', ')}, or any \`snapshot run --op NAME\`)`);
      else if (!auto.before_operations.includes(op)) auto.before_operations.push(op);
    }
  }
  const pol = a.get('policy');
  if (pol) auto.policy = retention(p, entries(p, pol.value, `${where}.policy`, RETENTION_KEYS), `${where}.policy`);
}

/** Named policies from one or more `policies:` mappings into `policies` (a name may appear once). */
function namedPolicies(p: Problems, policies: Record<string, ConfigPolicy>, places: readonly (readonly [string, Pair<Node, Node | null> | undefined])[]): void {
  for (const [where, pair] of places) {
    if (!pair) continue;
    if (!isMap(pair.value)) {
      p.add(pair.value, `${where} must be a mapping of policy names to policies`);
      continue;
    }
    for (const item of (pair.value as YAMLMap<Node, Node | null>).items) {
      const pname = isScalar(item.key) ? String(item.key.value) : '';
      if (!NAME_RE.test(pname)) {
        p.add(item.key, `policy name ${JSON.stringify(pname)} is not a name (letters, digits, ".", "_", "-")`);
        continue;
      }
      if (Object.hasOwn(policies, pname) || ['run', 'backup'].includes(pname) || pname.startsWith('before-')) {
        p.add(
          item.key,
          `policy ${pname} is ${Object.hasOwn(policies, pname) ? 'defined twice' : 'a name clonebox uses for its own auto snapshots; choose another'}`,
        );
        continue;
      }
      policies[pname] = namedPolicy(p, item.value, `${where}.${pname}`);
    }
  }
}

/** `groups:`: a list of `{name, members, description?, auto_snapshot?, policies?}`. */
function parseGroups(p: Problems, node: Value): ConfigGroup[] {
  if (!isSeq(node)) {
    p.add(node, 'groups must be a list of groups (each with name and members)');
    return [];
  }
  const out: ConfigGroup[] = [];
  for (const [i, item] of (node.items as Value[]).entries()) {
    const g = entries(p, item, `groups[${i}]`, ['name', 'members', 'description', 'auto_snapshot', 'policies']);
    if (!isMap(item)) continue;
    const namePair = g.get('name');
    const name = namePair ? str(p, namePair.value, `groups[${i}].name`) : null;
    if (!namePair) p.add(item, `groups[${i}] needs a \`name:\``);
    else if (name !== null && (!NAME_RE.test(name) || name === '.' || name === '..')) {
      p.add(namePair.value, `groups[${i}].name ${JSON.stringify(name)} is not a group name (letters, digits, ".", "_", "-"; at most 128)`);
    } else if (name !== null && out.some((o) => o.name === name)) p.add(namePair.value, `group ${name} is named twice`);
    const where = name ? `groups.${name}` : `groups[${i}]`;
    const membersPair = g.get('members');
    const members: string[] = [];
    if (!membersPair) p.add(item, `${where} needs \`members:\` (a list of VM names)`);
    else {
      for (const m of strList(p, membersPair.value, `${where}.members`) ?? []) {
        if (!NAME_RE.test(m) || m === '.' || m === '..') p.add(membersPair.value, `${where}.members: ${JSON.stringify(m)} is not a VM name`);
        else if (members.includes(m)) p.add(membersPair.value, `${where}.members names ${m} twice`);
        else members.push(m);
      }
      if (members.length === 0 && isSeq(membersPair.value) && membersPair.value.items.length === 0)
        p.add(membersPair.value, `${where}.members needs at least one VM`);
    }
    let description: string | null | undefined;
    const d = g.get('description');
    if (d) description = isScalar(d.value) && d.value.value === null ? null : str(p, d.value, `${where}.description`);
    const auto: ConfigGroup['auto'] = { enabled: true, before_operations: [], policy: {} };
    autoSnapshot(p, g.get('auto_snapshot'), `${where}.auto_snapshot`, auto, GROUP_OPERATIONS);
    const policies: Record<string, ConfigPolicy> = {};
    namedPolicies(p, policies, [[`${where}.policies`, g.get('policies')]]);
    if (name === null || members.length === 0) continue;
    out.push({
      name,
      members: members.sort(),
      ...(description !== undefined ? { description } : {}),
      auto,
      policies,
      at: p.at(namePair?.value),
      membersAt: p.at(membersPair?.value),
    });
  }
  return out;
}

function namedPolicy(p: Problems, node: Value, where: string): ConfigPolicy {
  const pairs = entries(p, node, where, NAMED_KEYS);
  const policy = retention(p, pairs, where);
  const keep = pairs.get('keep');
  if (keep) {
    // keep: "5d" keeps what is younger than 5 days; keep: 5 keeps the 5 newest.
    if (isScalar(keep.value) && typeof keep.value.value === 'number') {
      const n = count(p, keep.value, `${where}.keep`);
      if (n !== null) policy.keep_last = n;
    } else {
      const d = duration(p, keep.value, `${where}.keep`);
      if (d !== null) policy.keep_for = d;
    }
  }
  let timezone: string | null = null;
  const tz = pairs.get('timezone');
  // null (as `config show` prints it) is the local time zone, as is no key at all.
  if (tz && !(isScalar(tz.value) && tz.value.value === null)) {
    const s = str(p, tz.value, `${where}.timezone`);
    if (s !== null) timezone = attempt(p, tz.value, `${where}.timezone`, () => checkTimezone(s));
  }
  const when: string[] = [];
  const w = pairs.get('when');
  if (w) {
    const items = isSeq(w.value) ? (w.value.items as Value[]) : [w.value];
    for (const item of items) {
      const s = str(p, item, `${where}.when (a daily time "HH:MM" or a cron expression)`);
      if (s === null) continue;
      const expr = attempt(p, item, `${where}.when`, () => cronOf(s, timezone));
      if (expr !== null && !when.includes(expr)) when.push(expr);
    }
  }
  attempt(p, node, where, () => validatePolicy(policy));
  return { policy, when, timezone };
}

function invalid(p: Problems): CloneboxError {
  const n = p.list.length;
  return CloneboxError.CONFIG_INVALID(`${p.file}: ${n === 1 ? 'a problem' : `${n} problems`}\n${p.list.join('\n')}`, {
    hint: 'the schema is in docs/policies.md; `clonebox config check FILE` checks a file without applying it',
  });
}
