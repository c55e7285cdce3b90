/**
 * VM groups: several VMs snapshotted, restored and deleted as one (docs/groups.md).
 *
 *   <home>/groups/<group>/group.json          the group record (GroupRecord, written atomically)
 *   <home>/groups/<group>/snapshots/<s>.json  one record per group snapshot (GroupSnapshotRecord)
 *   <home>/groups/<group>/journal.json        the group operation in progress, if any (store/journal.ts)
 *   <home>/groups/<group>/lock                held while a command changes the group or its members
 *
 * A group snapshot is one record naming each member's snapshot; each member snapshot is an ordinary
 * snapshot of its VM (in the VM's own list) whose record carries `group: {name, snapshot}`. The group
 * record lists the VMs that the NEXT group snapshot takes; a group snapshot names its own members, so
 * adding or removing a VM later never changes what an older group snapshot restores.
 *
 * Lock order, everywhere: the group's lock first, then the members' VM locks in sorted order of their
 * names. Two group operations (of the same group or of two groups sharing a VM) therefore never wait
 * for each other in a circle.
 */
import { readdir, readFile, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { ensureDir, writeJsonAtomic } from '../fsutil.js';
import { checkName, closestName } from '../names.js';
import { ensureHome, groupDir, type Home } from './home.js';
import { acquireLock, type Lock } from './lock.js';

export interface GroupRecord {
  format: 1;
  name: string;
  created_at: string;
  description: string | null;
  /** Member VM names, sorted (the order their locks are taken in); at least one. */
  members: string[];
  /** Free-form state owned by other modules (a group's policies and schedules), kept as is. */
  extra?: Record<string, unknown>;
}

type GroupSnapshotState = 'creating' | 'ready' | 'reverting' | 'deleting';

/**
 * How the group snapshot's members were held at one point while their snapshots were taken:
 *   locks   image-driver VMs only: every member's lock was held (nothing else writes a registered image)
 *   paused  every running libvirt member was paused (virsh suspend) until all snapshots were taken
 *   frozen  every running libvirt member's filesystems were frozen through the guest agent (--quiesce)
 *   mixed   --quiesce where some members had no answering agent: those were paused instead
 */
export type GroupConsistency = 'locks' | 'paused' | 'frozen' | 'mixed';

interface GroupSnapshotMember {
  vm: string;
  /** The member snapshot's name in the VM's own list (today always the group snapshot's name). */
  snapshot: string;
}

export interface GroupSnapshotRecord {
  format: 1;
  name: string;
  group: string;
  state: GroupSnapshotState;
  created_at: string;
  description: string | null;
  tags: string[];
  /** 'full' when every member snapshot holds memory state (--memory), else 'disk'. */
  type: 'disk' | 'full';
  /** Sorted by VM name. */
  members: GroupSnapshotMember[];
  consistency: GroupConsistency;
  /**
   * Milliseconds the running libvirt members were paused or frozen (from the first pause to the last
   * resume); null when none ran (image-driver groups, stopped domains).
   */
  pause_ms: number | null;
  auto_created: boolean;
  auto_policy: string | null;
}

/** The tag a member snapshot's record carries (SnapshotRecord.group). */
export interface MemberTag {
  name: string;
  snapshot: string;
}

export function checkGroupName(name: string): string {
  try {
    return checkName('VM', name);
  } catch {
    throw new CloneboxError('BAD_NAME', `invalid group name ${JSON.stringify(name)}`, {
      hint: 'names start with a letter or digit and use only letters, digits, ".", "_" and "-" (at most 128)',
    });
  }
}

export function groupFile(home: Home, group: string): string {
  return path.join(groupDir(home, group), 'group.json');
}

function groupSnapshotsDir(home: Home, group: string): string {
  return path.join(groupDir(home, group), 'snapshots');
}

export function groupSnapshotFile(home: Home, group: string, name: string): string {
  return path.join(groupSnapshotsDir(home, group), `${name}.json`);
}

export function groupJournalPath(home: Home, group: string): string {
  return path.join(groupDir(home, group), 'journal.json');
}

export async function listGroupNames(home: Home): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(home.groupsDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError(err, 'cannot list groups', home.groupsDir);
  }
  const out: string[] = [];
  for (const n of names.sort()) {
    if (n.startsWith('.')) continue;
    if (
      await readFile(groupFile(home, n)).then(
        () => true,
        () => false,
      )
    )
      out.push(n);
  }
  return out;
}

function isGroupRecord(r: unknown, name: string): r is GroupRecord {
  const g = r as GroupRecord | null;
  return typeof g === 'object' && g !== null && g.format === 1 && g.name === name && Array.isArray(g.members) && g.members.every((m) => typeof m === 'string');
}

export async function loadGroup(home: Home, group: string): Promise<GroupRecord> {
  checkGroupName(group);
  const file = groupFile(home, group);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      const near = closestName(group, await listGroupNames(home).catch(() => []));
      throw CloneboxError.GROUP_NOT_FOUND(`no such group, ${group}`, {
        hint: near ? `did you mean ${near}?` : `see \`clonebox group list --home ${home.root}\``,
      });
    }
    throw ioError(err, 'cannot read group record', file);
  }
  try {
    const rec = JSON.parse(text) as unknown;
    if (!isGroupRecord(rec, group)) throw new Error('unexpected shape');
    return rec;
  } catch (err) {
    throw new CloneboxError('STORE_CORRUPT', `group record is damaged (${(err as Error).message}), ${file}`);
  }
}

export async function saveGroup(home: Home, rec: GroupRecord): Promise<void> {
  await ensureDir(groupDir(home, rec.name));
  await writeJsonAtomic(groupFile(home, rec.name), { ...rec, members: [...new Set(rec.members)].sort() });
}

/** Removes the group's directory: the record first (the group stops existing), then the rest. */
export async function removeGroupDir(home: Home, group: string): Promise<void> {
  await rm(groupFile(home, group), { force: true });
  await rm(groupDir(home, group), { recursive: true, force: true });
}

export async function listGroupSnapshotRecords(home: Home, group: string): Promise<GroupSnapshotRecord[]> {
  const dir = groupSnapshotsDir(home, group);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError(err, 'cannot list group snapshots', dir);
  }
  const out: GroupSnapshotRecord[] = [];
  for (const n of names.sort()) {
    if (!n.endsWith('.json') || n.startsWith('.')) continue;
    const file = path.join(dir, n);
    try {
      const r = JSON.parse(await readFile(file, 'utf8')) as GroupSnapshotRecord;
      if (r.format !== 1 || r.group !== group || !Array.isArray(r.members)) throw new Error('unexpected shape');
      out.push(r);
    } catch (err) {
      throw new CloneboxError('STORE_CORRUPT', `group snapshot record is damaged (${(err as Error).message}), ${file}`);
    }
  }
  return out;
}

/** The group's lock. Callers take it BEFORE any member's VM lock (see the lock order above). */
export async function lockGroup(home: Home, group: string, command: string): Promise<Lock> {
  const dir = groupDir(home, group);
  await ensureHome(home);
  await ensureDir(dir);
  const lock = await acquireLock(path.join(dir, 'lock'), `group ${group}`, command);
  return {
    path: lock.path,
    release: async () => {
      await lock.release();
      // A failed `group create` leaves no trace (rmdir refuses a directory that holds a group).
      await rmdir(dir).catch(() => undefined);
    },
  };
}
