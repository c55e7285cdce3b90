/**
 * The home sweep: recovers operations that were interrupted before their VM existed.
 *
 * Why it exists: journal recovery (store/journal.ts) runs per VM, under its lock, when a command next
 * opens that VM. But an import or a team-sync pull that creates a NEW VM writes its journal under
 * vms/<vm>/ and its layers as hidden temporary files beside the destination disk, and registers the
 * VM (vm.json) only when it commits. Killed before that, it leaves a directory no VM command opens
 * (there is no such VM, `vm list` does not show it) and temporary files that may be large; only a retry
 * of the same import to the same name would have recovered it. So every command that uses the home
 * first looks for VM directories holding a journal but no vm.json, and recovers each with the same
 * recover() as everything else: a prepare phase is rolled back (its temporary files deleted, then the
 * directory), a commit phase rolled forward (the VM then exists, complete).
 *
 * Never touches an operation that is still running: the VM lock is taken with no waiting, so a live
 * holder (here, or on another host sharing the home) makes the sweep leave the directory alone, and a
 * dead holder's lock is taken over by the lock module's usual rule. A damaged journal is reported,
 * never acted on.
 *
 * Cost when there is nothing to do: one readdir of vms/ and one stat per VM directory; the journal and
 * lock modules are loaded only when a candidate is found.
 */
import { readdir, rm, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { formatBytes } from '../names.js';
import type { Home } from './home.js';
import type { StepHandlers } from './journal.js';

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** VM directories with a journal and no VM record: operations interrupted before the VM existed. */
async function candidates(home: Home): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(home.vmsDir);
  } catch {
    return []; // no home yet (or unreadable: the command itself will say so)
  }
  const found = await Promise.all(
    names.map(async (n) => {
      if (n.startsWith('.')) return null;
      const dir = path.join(home.vmsDir, n);
      if (!(await exists(path.join(dir, 'journal.json')))) return null;
      return (await exists(path.join(dir, 'vm.json'))) ? null : n;
    }),
  );
  return found.filter((n): n is string => n !== null).sort();
}

/** No driver steps: what the sweep recovers by default (see sweepInterrupted). */
const NO_DRIVER_STEPS: StepHandlers = new Map();

/**
 * Recovers every interrupted operation of a VM that does not exist (see above). Returns one warning
 * line per VM directory it cleaned up or could not; never throws.
 *
 * `handlers` runs driver steps of a commit being rolled forward (drivers/registry.ts has them; store/
 * cannot import drivers/). The operations swept here create a VM with the image driver, whose journals
 * hold no driver step, so the default is none: a driver step found anyway is reported as a warning.
 */
export async function sweepInterrupted(home: Home, handlers: StepHandlers = NO_DRIVER_STEPS): Promise<string[]> {
  const found = await candidates(home);
  const warnings: string[] = [];
  for (const vm of found) {
    try {
      const w = await sweepOne(home, vm, handlers);
      if (w) warnings.push(w);
    } catch (err) {
      warnings.push(`could not clean up an interrupted operation in ${path.join(home.vmsDir, vm)}: ${(err as Error).message}`);
    }
  }
  for (const group of await groupCandidates(home)) {
    try {
      const w = await sweepGroup(home, group, handlers);
      if (w) warnings.push(w);
    } catch (err) {
      warnings.push(`could not clean up an interrupted operation in ${path.join(home.groupsDir, group)}: ${(err as Error).message}`);
    }
  }
  return warnings;
}

/**
 * Group directories with a journal and no group record: a group import interrupted before the group
 * existed, or a `vm remove --leave-groups` that deleted the group's record and was killed before its
 * journal was gone. No group command opens such a directory, so the sweep finishes them too.
 */
async function groupCandidates(home: Home): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(home.groupsDir);
  } catch {
    return [];
  }
  const found: string[] = [];
  for (const n of names.sort()) {
    if (n.startsWith('.')) continue;
    const dir = path.join(home.groupsDir, n);
    if ((await exists(path.join(dir, 'journal.json'))) && !(await exists(path.join(dir, 'group.json')))) found.push(n);
  }
  return found;
}

/** Recovers one group candidate under the group's lock and its members' (taken without waiting, in the group lock order). */
async function sweepGroup(home: Home, group: string, handlers: StepHandlers): Promise<string | null> {
  const { acquireLock } = await import('./lock.js');
  const { recoverGroup } = await import('./journal.js');
  const { groupJournalPath } = await import('./groups.js');
  const { readFile } = await import('node:fs/promises');
  const dir = path.join(home.groupsDir, group);
  const held: Awaited<ReturnType<typeof acquireLock>>[] = [];
  let members: string[] = [];
  try {
    try {
      held.push(await acquireLock(path.join(dir, 'lock'), `group ${group}`, 'clonebox (recovering an interrupted operation)', 0));
      const doc = JSON.parse(await readFile(groupJournalPath(home, group), 'utf8')) as { members?: unknown };
      members = Array.isArray(doc.members) ? doc.members.filter((m): m is string => typeof m === 'string').sort() : [];
      for (const m of members) held.push(await acquireLock(path.join(home.vmsDir, m, 'lock'), m, 'clonebox (recovering an interrupted operation)', 0));
    } catch {
      return null; // busy (still running, or being recovered), or gone meanwhile
    }
    if (!(await exists(groupJournalPath(home, group))) || (await exists(path.join(dir, 'group.json')))) return null;
    const r = await recoverGroup(home, group, handlers);
    if (r.outcome === 'none') return null;
    if (await exists(path.join(dir, 'group.json'))) return `completed an interrupted ${opWord(r.op)} of group '${group}' (the group exists)`;
    // No group record after it: nothing of the group is left to keep.
    await rm(dir, { recursive: true, force: true });
    return r.outcome === 'completed'
      ? `completed an interrupted ${opWord(r.op)} in ${dir}`
      : `removed the remains of an interrupted ${opWord(r.op)} of group '${group}'`;
  } finally {
    for (const l of held.reverse()) await l.release();
    // A member's lock made its directory again if the operation had removed it: only when empty.
    for (const m of members) await rmdir(path.join(home.vmsDir, m)).catch(() => undefined);
  }
}

function opWord(op: string | null): string {
  if (op?.startsWith('snapshot import')) return 'import';
  if (op?.startsWith('snapshot sync')) return 'sync pull';
  return op ? `'${op}'` : 'operation';
}

async function sweepOne(home: Home, vm: string, handlers: StepHandlers): Promise<string | null> {
  const { acquireLock } = await import('./lock.js');
  const { recoverReport, journalPath } = await import('./journal.js');
  const dir = path.join(home.vmsDir, vm);
  const journal = journalPath(home, vm);
  const vmJson = path.join(dir, 'vm.json');
  let lock: Awaited<ReturnType<typeof acquireLock>>;
  try {
    lock = await acquireLock(path.join(dir, 'lock'), vm, 'clonebox (recovering an interrupted operation)', 0);
  } catch {
    // VM_BUSY: the operation is still running, or another command is recovering it; anything else (no
    // permission on a shared home...) is left to the commands on that VM to report.
    return null;
  }
  let cleaned = false;
  try {
    // Judged again under the lock: another command may have recovered it meanwhile.
    if (!(await exists(journal)) || (await exists(vmJson))) return null;
    let r: Awaited<ReturnType<typeof recoverReport>>;
    try {
      r = await recoverReport(home, vm, handlers);
    } catch (err) {
      if ((err as { code?: string }).code !== 'STORE_CORRUPT') throw err;
      return (
        `${(err as Error).message}, and VM ${vm} does not exist: nothing was deleted; if no clonebox command is ` +
        `running on it, delete the temporary files the journal lists under "created" (hidden files beside the disks), then remove ${dir}`
      );
    }
    const what = opWord(r.op);
    if (r.outcome === 'none') return null;
    if (r.outcome === 'completed') {
      if (await exists(vmJson)) return `completed an interrupted ${what} of VM '${vm}' (it had passed its commit point; the VM is registered)`;
      return `completed an interrupted ${what} in ${dir}`;
    }
    cleaned = true;
    // The VM's default disks directory (<home>/disks/<vm>, made by the import) goes too when empty; a
    // directory chosen with --dir is the user's and stays.
    await rmdir(path.join(home.disksDir, vm)).catch(() => undefined);
    const files =
      r.removedFiles === 0 ? 'no temporary files yet' : `${r.removedFiles} temporary file${r.removedFiles === 1 ? '' : 's'}, ${formatBytes(r.removedBytes)}`;
    return `removed the remains of an interrupted ${what} of VM '${vm}' (${files})`;
  } finally {
    if (cleaned) await removeRegistryLeftovers(dir);
    await lock.release();
    await rmdir(dir).catch(() => undefined); // only when empty: anything unexpected stays
  }
}

/** After a rollback of a VM that never existed: what the journal's writer left besides the journal. */
async function removeRegistryLeftovers(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    // Atomic writes' temporaries of the journal or lock, torn by the crash.
    if (n.startsWith('.journal.json.tmp-') || n.startsWith('.lock.tmp-')) await rm(path.join(dir, n), { force: true });
  }
  await rmdir(path.join(dir, 'snapshots')).catch(() => undefined); // only when empty
}
