/**
 * Per-VM operation journal: what makes every multi-step command crash-safe.
 *
 * An operation runs in two phases:
 *   prepare  new files are created (each recorded in the journal BEFORE it is created); nothing that
 *            already existed is touched. A crash here is rolled back: the recorded files are deleted.
 *   commit   the complete list of remaining actions (renames, record writes, deletions) is written to
 *            the journal first, then executed one by one, the journal noting progress before any
 *            action that could not be re-run blindly (see runActions). A crash here is rolled
 *            forward: the next command re-runs the actions from the last one noted. Every action is
 *            idempotent, and those re-run together touch distinct files, so re-running them is harmless.
 *
 * The journal lives at <home>/vms/<vm>/journal.json and is replaced atomically at every step.
 *
 * Driver steps may report what they found (StepResult): warnings for the caller, and notes (facts such
 * as "the guest was quiesced") that later `write_json` actions of the same commit merge into the value
 * they write. Notes are persisted with the step's progress, so a roll-forward in another process writes
 * the same records. A step that re-runs after a crash and finds its work done reports nothing, and the
 * record keeps the value the operation planned (which therefore states the conservative case).
 *
 * A driver step that failed WITHOUT acting, and that retrying cannot complete, throws an error marked with
 * notTaken(): the operation is then undone as if it had failed in prepare, provided every action before
 * the step only wrote files the prepare phase announced. A VM is never left with a journal that every
 * later command replays into the same failure.
 *
 * Group operations (store/groups.ts). An operation over several VMs (a group snapshot, restore or
 * delete) is ONE journal, at <home>/groups/<group>/journal.json, holding the files and actions of every
 * member: it is rolled back or forward as a whole, so every member ends entirely before or entirely
 * after it. Each member VM's own journal.json is then a redirect ({group, started, pid}, no actions),
 * written after the group journal and removed by the group commit's last actions. Per-VM recovery
 * honours it: finding a redirect, recover() recovers the group journal (taking the group's lock and the
 * other members' locks without waiting, in the group lock order) instead of the VM alone; a redirect
 * whose group journal is gone or belongs to another operation is stale and simply removed.
 *
 * Crash testing: CLONEBOX_CRASH_AT=N makes the process SIGKILL itself at the N-th journal step
 * (each persist, each redirect written and each commit action counts), so tests can stop an operation
 * at every point.
 */
import { lstat, readdir, readFile, rename, rm, unlink } from 'node:fs/promises';
import path from 'node:path';
import { nowIso } from '../clock.js';
import { crashPoint } from '../crash.js';
import { CloneboxError, ioError } from '../errors.js';
import { ensureDir, pathExists, sweepStaleTempsIn, writeJsonAtomic } from '../fsutil.js';
import { groupJournalPath } from './groups.js';
import { groupDir, type Home, vmDir } from './home.js';
import { acquireLock, type Lock } from './lock.js';

export type Action =
  | { do: 'rename'; from: string; to: string }
  | { do: 'unlink'; path: string }
  /** `notes`: names of step notes to merge into `value` (an object) when they were reported. */
  | { do: 'write_json'; path: string; value: unknown; notes?: string[] }
  | { do: 'remove_dir'; path: string }
  /** A step a driver performs itself (virsh calls...); its handler must be idempotent too. */
  | { do: 'driver'; driver: string; step: unknown };

/** What a driver step reports: warnings for the caller, notes for later record writes (see the top). */
export interface StepResult {
  warnings?: string[];
  notes?: Record<string, unknown>;
}

/** Performs one driver step of a journal; must be idempotent (a crash may have come after it acted). */
export type StepHandler = (step: unknown) => Promise<StepResult | undefined>;

const NOT_TAKEN = new WeakSet<Error>();

/**
 * Marks the error of a driver step that verifiably changed nothing and cannot succeed by being retried:
 * the journal undoes the operation instead of keeping it for a roll-forward that would fail again.
 */
export function notTaken<E extends Error>(err: E): E {
  NOT_TAKEN.add(err);
  return err;
}

/** What a commit reported: its driver steps' warnings and notes. */
export interface CommitResult {
  warnings: string[];
  notes: Record<string, unknown>;
}

/**
 * Driver name → loader of the handler of that driver's steps. The journal names no driver: whoever
 * begins or recovers an operation hands it the registry (drivers/registry.ts). The loaders run on
 * demand because a journal left by a crash is recovered by whatever command runs next, which may never
 * have loaded that driver (and should not pay for it when there is nothing to recover).
 */
export type StepHandlers = ReadonlyMap<string, () => Promise<StepHandler>>;

interface JournalDoc {
  format: 1;
  op: string;
  /** The VM (a group journal: the group's name). */
  vm: string;
  started: string;
  pid: number;
  phase: 'prepare' | 'commit';
  created: string[];
  actions: Action[];
  done: number;
  /** Reported by the driver steps done so far (absent in journals of older builds). */
  warnings?: string[];
  notes?: Record<string, unknown>;
  /**
   * A member VM's redirect: the operation is in this group's journal (with the same `started` and
   * `pid`); this document holds nothing else to do.
   */
  group?: string;
  /** A group journal: the member VMs, each holding a redirect while the operation runs. */
  members?: string[];
}

export function journalPath(home: Home, vm: string): string {
  return path.join(vmDir(home, vm), 'journal.json');
}

export class Journal {
  private doc: JournalDoc;
  private readonly file: string;
  private readonly handlers: StepHandlers;

  private constructor(file: string, doc: JournalDoc, handlers: StepHandlers) {
    this.file = file;
    this.doc = doc;
    this.handlers = handlers;
  }

  /**
   * Starts an operation. The caller holds the VM lock and has run recover() already; `handlers` runs
   * the driver steps this operation will commit.
   */
  static async begin(home: Home, vm: string, op: string, handlers: StepHandlers): Promise<Journal> {
    const file = journalPath(home, vm);
    await ensureDir(path.dirname(file));
    const doc: JournalDoc = { format: 1, op, vm, started: nowIso(), pid: process.pid, phase: 'prepare', created: [], actions: [], done: 0 };
    const j = new Journal(file, doc, handlers);
    await j.persist();
    return j;
  }

  private async persist(): Promise<void> {
    await writeJsonAtomic(this.file, this.doc);
    crashPoint('journal.persist');
  }

  /**
   * Starts an operation over several VMs: one journal for all of them (see the top). The caller holds
   * the group's lock and every member's lock, and has recovered the group (recoverGroup()) and each
   * member. `members` are the VMs whose state it changes.
   */
  static async beginGroup(home: Home, group: string, members: string[], op: string, handlers: StepHandlers): Promise<Journal> {
    const file = groupJournalPath(home, group);
    await ensureDir(path.dirname(file));
    const sorted = [...new Set(members)].sort();
    const doc: JournalDoc = {
      format: 1,
      op,
      vm: group,
      started: nowIso(),
      pid: process.pid,
      phase: 'prepare',
      created: [],
      actions: [],
      done: 0,
      members: sorted,
    };
    const j = new Journal(file, doc, handlers);
    await j.persist();
    for (const vm of sorted) {
      const redirect: JournalDoc = { format: 1, op, vm, started: doc.started, pid: doc.pid, phase: 'prepare', created: [], actions: [], done: 0, group };
      await ensureDir(vmDir(home, vm));
      await writeJsonAtomic(journalPath(home, vm), redirect);
      crashPoint('journal.group-redirect');
    }
    j.redirects = sorted.map((vm) => journalPath(home, vm));
    return j;
  }

  /** A group journal's member redirects (removed at the end of its commit or rollback). */
  private redirects: string[] = [];

  /** Records a file this operation is about to create, so a crash before commit deletes it. */
  async willCreate(...files: string[]): Promise<void> {
    this.doc.created.push(...files);
    await this.persist();
  }

  /**
   * Writes the remaining actions, then performs them. After this returns the operation is done. If a
   * driver step throws a notTaken() error and the operation can be undone, it is undone (the journal is
   * gone, rollback() does nothing more) and the error is thrown.
   */
  async commit(actions: Action[]): Promise<CommitResult> {
    this.doc.phase = 'commit';
    // A group operation's last actions remove its members' redirects: until the very end, per-VM
    // recovery of any member leads to this journal.
    this.doc.actions = [...actions, ...this.redirects.map((f): Action => ({ do: 'unlink', path: f }))];
    this.doc.done = 0;
    await this.persist();
    return runActions(this.doc, this.file, this.handlers).catch(unwrapUndone);
  }

  /** Undoes the prepare phase (after an error): deletes what it created and the journal. */
  async rollback(): Promise<void> {
    if (this.doc.phase === 'commit') {
      // Past the point of no return: finish instead of undoing (from the progress made in memory,
      // persisted first: runActions counts on the journal's progress being the one it starts from).
      await writeJsonAtomic(this.file, this.doc);
      await runActions(this.doc, this.file, this.handlers).catch(unwrapUndone);
      return;
    }
    await deleteCreated(this.doc.created);
    for (const f of this.redirects) await rm(f, { force: true });
    await rm(this.file, { force: true });
  }
}

/** Deletes what a prepare phase created; returns how many files that removed and their bytes. */
async function deleteCreated(created: string[]): Promise<{ files: number; bytes: number }> {
  const removed = { files: 0, bytes: 0 };
  const remove = async (f: string) => {
    const size = await lstat(f).then(
      (st) => st.size,
      () => 0,
    );
    await unlink(f).then(
      () => {
        removed.files++;
        removed.bytes += size;
      },
      () => undefined,
    );
  };
  for (const f of created) {
    await remove(f);
    // The qcow2 writer and atomic writes use `.<name>.tmp-*` siblings before renaming into place.
    const dir = path.dirname(f);
    const prefix = `.${path.basename(f)}.tmp-`;
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const n of names) if (n.startsWith(prefix)) await remove(path.join(dir, n));
  }
  return removed;
}

/** An error that runActions() turned into an undo of the whole operation (the journal is gone). */
class UndoneError extends Error {
  constructor(
    readonly reason: unknown,
    readonly removed: { files: number; bytes: number },
  ) {
    super('operation undone');
  }
}

/** The step's own error, for a caller that runs the commit itself. */
function unwrapUndone(err: unknown): never {
  throw err instanceof UndoneError ? err.reason : err;
}

/** The redirect files a group journal's commit removes last (its trailing unlinks of `<vm>/journal.json`). */
function redirectsOf(doc: JournalDoc): string[] {
  if (!doc.members) return [];
  return doc.actions.filter((a): a is { do: 'unlink'; path: string } => a.do === 'unlink' && path.basename(a.path) === 'journal.json').map((a) => a.path);
}

/** Can the commit be undone at this point: every action before the current one wrote an announced file? */
function undoable(doc: JournalDoc): boolean {
  const created = new Set(doc.created);
  return doc.actions.slice(0, doc.done).every((a) => a.do === 'write_json' && created.has(a.path));
}

/**
 * The files an action touches, or null for one whose effects are not confined to named files (a
 * driver step, a removed directory). See runActions.
 */
function touchedBy(a: Action): string[] | null {
  switch (a.do) {
    case 'rename':
      return [path.resolve(a.from), path.resolve(a.to)];
    case 'unlink':
    case 'write_json':
      return [path.resolve(a.path)];
    default:
      return null;
  }
}

/**
 * Performs the actions from `doc.done` on, `doc.done` persisted as at the call. Progress is persisted
 * before an action that touches a file an action since the last persisted progress touched, around
 * every driver step and removed directory, and with a step's notes or warnings: a roll-forward re-runs
 * at most a run of renames, deletions and record writes on distinct files, each of which finds its
 * work done (a rename whose source is gone and target there, a deletion of a missing file, the same
 * record written again). Persisting the whole journal after every action cost a pull of 1,002 layers
 * 2,004 rewrites of a journal of ~0.9 MB (72 ms each at load 10: about 2.4 min).
 */
async function runActions(doc: JournalDoc, file: string, handlers: StepHandlers): Promise<CommitResult> {
  let persisted = doc.done;
  const touched = new Set<string>(); // by the actions in [persisted, doc.done)
  const persist = async () => {
    if (persisted === doc.done) return;
    await writeJsonAtomic(file, doc);
    persisted = doc.done;
    touched.clear();
  };
  while (doc.done < doc.actions.length) {
    const a = doc.actions[doc.done]!;
    const files = touchedBy(a);
    if (files === null || files.some((f) => touched.has(f))) await persist();
    let r: StepResult | undefined;
    try {
      r = await perform(a, handlers, doc.notes ?? {});
    } catch (err) {
      if (a.do === 'driver' && err instanceof Error && NOT_TAKEN.has(err) && undoable(doc)) {
        const removed = await deleteCreated(doc.created);
        for (const r of redirectsOf(doc)) await rm(r, { force: true });
        await rm(file, { force: true });
        // Nothing is left to finish: a later rollback() of this journal has nothing to delete.
        doc.phase = 'prepare';
        doc.created = [];
        throw new UndoneError(err, removed);
      }
      throw err;
    }
    if (r?.warnings?.length) doc.warnings = [...(doc.warnings ?? []), ...r.warnings];
    if (r?.notes) doc.notes = { ...(doc.notes ?? {}), ...r.notes };
    crashPoint('journal.action');
    doc.done++;
    if (files === null || r?.warnings?.length || r?.notes) await persist();
    else for (const f of files) touched.add(f);
  }
  await rm(file, { force: true });
  return { warnings: doc.warnings ?? [], notes: doc.notes ?? {} };
}

/** `value` with the named notes that were reported merged in (objects only). */
function withNotes(value: unknown, names: string[] | undefined, notes: Record<string, unknown>): unknown {
  if (!names || typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  const picked = Object.fromEntries(names.filter((n) => Object.hasOwn(notes, n)).map((n) => [n, notes[n]]));
  return { ...value, ...picked };
}

async function perform(a: Action, handlers: StepHandlers, notes: Record<string, unknown>): Promise<StepResult | undefined> {
  switch (a.do) {
    case 'rename':
      try {
        await rename(a.from, a.to);
      } catch (err) {
        // Already done by an earlier, interrupted run: the source is gone and the target is there.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' && (await pathExists(a.to))) return;
        throw ioError(err, 'cannot rename', `${a.from} -> ${a.to}`);
      }
      return;
    case 'unlink':
      await unlink(a.path).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw ioError(err, 'cannot delete', a.path);
      });
      return;
    case 'write_json':
      await ensureDir(path.dirname(a.path));
      await writeJsonAtomic(a.path, withNotes(a.value, a.notes, notes));
      return;
    case 'remove_dir':
      await rm(a.path, { recursive: true, force: true });
      return;
    case 'driver': {
      const load = handlers.get(a.driver);
      if (!load) throw new CloneboxError('INTERNAL', `no handler for ${a.driver} journal steps`);
      return (await load())(a.step);
    }
    default:
      // An action this build does not know must stop recovery, never be skipped.
      throw new CloneboxError('STORE_CORRUPT', `unknown journal action ${JSON.stringify((a as { do?: unknown }).do)}`);
  }
}

/** What recoverReport() did: the outcome, the interrupted operation, and what a rollback deleted. */
export interface RecoveryReport {
  outcome: 'none' | 'rolled-back' | 'completed';
  /** The journal's operation ("snapshot import a,b"...), null when there was none. */
  op: string | null;
  /** Files the rollback deleted (and their bytes); zero for a roll-forward. */
  removedFiles: number;
  removedBytes: number;
}

/**
 * Finishes or rolls back an interrupted operation on `vm`. The caller holds the VM lock (so the
 * journal's writer is dead or is us). `handlers` runs the driver steps of a commit being rolled
 * forward. Returns what it did.
 */
export async function recover(home: Home, vm: string, handlers: StepHandlers): Promise<'none' | 'rolled-back' | 'completed'> {
  const outcome = (await recoverReport(home, vm, handlers)).outcome;
  await sweepVmTemps(home, vm);
  return outcome;
}

/**
 * Temporaries of atomic writes and new images (`.<name>.tmp-<pid>-*`) that a process killed with
 * SIGKILL left in the VM's directories (its records, and the directories of its disks and layers):
 * deleted when their pid is dead on this host (issue 17). Other exits delete their own (fsutil.ts).
 */
async function sweepVmTemps(home: Home, vm: string): Promise<void> {
  await sweepStaleTempsIn(vmDir(home, vm));
  await sweepStaleTempsIn(path.join(vmDir(home, vm), 'snapshots'));
  // Beside the disks (a directory the user may share with other programs): only the temporaries of
  // files named after a disk (its layers, and the hidden names of merges and imports).
  const stems = new Map<string, string[]>();
  try {
    const rec = JSON.parse(await readFile(path.join(vmDir(home, vm), 'vm.json'), 'utf8')) as { disks?: { path?: unknown }[] };
    for (const d of rec.disks ?? []) {
      if (typeof d.path !== 'string') continue;
      const dir = path.dirname(d.path);
      stems.set(dir, [...(stems.get(dir) ?? []), path.basename(d.path).replace(/\.[^.]*$/, '')]);
    }
  } catch {
    return; // no VM record (yet): its own directories only
  }
  for (const [dir, names] of stems) {
    await sweepStaleTempsIn(dir, (n) => names.some((stem) => n.replace(/^\./, '').startsWith(stem)));
  }
}

/** recover(), telling what it found and removed (for the home sweep's warning, store/sweep.ts). */
export async function recoverReport(home: Home, vm: string, handlers: StepHandlers): Promise<RecoveryReport> {
  const file = journalPath(home, vm);
  let doc: JournalDoc;
  try {
    doc = JSON.parse(await readFile(file, 'utf8')) as JournalDoc;
    if (!isJournalDoc(doc)) throw new Error('unexpected shape');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { outcome: 'none', op: null, removedFiles: 0, removedBytes: 0 };
    throw new CloneboxError('STORE_CORRUPT', `operation journal is damaged (${(err as Error).message}), ${file}`, {
      hint: 'inspect it by hand; clonebox will not touch the VM until it is fixed or removed',
    });
  }
  if (typeof doc.group === 'string') return recoverFromMember(home, vm, doc, handlers);
  return recoverDoc(home, file, doc, handlers);
}

/** Rolls back (prepare) or forward (commit) the operation of a journal document read from `file`. */
async function recoverDoc(home: Home, file: string, doc: JournalDoc, handlers: StepHandlers): Promise<RecoveryReport> {
  const op = typeof doc.op === 'string' ? doc.op : null;
  if (doc.phase === 'commit') {
    try {
      await runActions(doc, file, handlers);
    } catch (err) {
      // A step that cannot be completed undid the operation: the VM is usable again.
      if (err instanceof UndoneError) return { outcome: 'rolled-back', op, removedFiles: err.removed.files, removedBytes: err.removed.bytes };
      throw err;
    }
    return { outcome: 'completed', op, removedFiles: 0, removedBytes: 0 };
  }
  const removed = await deleteCreated(doc.created);
  // A group journal rolled back in its prepare phase: its members' redirects go before it does.
  for (const vm of doc.members ?? []) await removeRedirect(home, vm, doc);
  await rm(file, { force: true });
  return { outcome: 'rolled-back', op, removedFiles: removed.files, removedBytes: removed.bytes };
}

/** Removes `vm`'s journal if it is a redirect to the group operation `doc` (never another operation's journal). */
async function removeRedirect(home: Home, vm: string, doc: JournalDoc): Promise<void> {
  const file = journalPath(home, vm);
  try {
    const r = JSON.parse(await readFile(file, 'utf8')) as JournalDoc;
    if (r.group === doc.vm && r.started === doc.started && r.pid === doc.pid) await rm(file, { force: true });
  } catch {
    /* none, or not ours */
  }
}

/**
 * Finishes or rolls back an interrupted group operation. The caller holds the group's lock and the
 * lock of every member of it (a group command, before it begins its own operation).
 */
export async function recoverGroup(home: Home, group: string, handlers: StepHandlers): Promise<RecoveryReport> {
  const file = groupJournalPath(home, group);
  let doc: JournalDoc;
  try {
    doc = JSON.parse(await readFile(file, 'utf8')) as JournalDoc;
    if (!isJournalDoc(doc) || !Array.isArray(doc.members)) throw new Error('unexpected shape');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { outcome: 'none', op: null, removedFiles: 0, removedBytes: 0 };
    throw new CloneboxError('STORE_CORRUPT', `group operation journal is damaged (${(err as Error).message}), ${file}`, {
      hint: "inspect it by hand; clonebox will not touch the group's VMs until it is fixed or removed",
    });
  }
  return recoverDoc(home, file, doc, handlers);
}

/**
 * Per-VM recovery that found a redirect: recovers the whole group operation. The caller holds `vm`'s
 * lock; the group's lock and the other members' are taken without waiting (a live holder means another
 * command is at it: VM_BUSY, try again), so this never waits while holding a lock out of order.
 */
async function recoverFromMember(home: Home, vm: string, redirect: JournalDoc, handlers: StepHandlers): Promise<RecoveryReport> {
  const group = redirect.group!;
  const gfile = groupJournalPath(home, group);
  let doc: JournalDoc | null = null;
  try {
    doc = JSON.parse(await readFile(gfile, 'utf8')) as JournalDoc;
  } catch {
    doc = null;
  }
  const same = (d: JournalDoc | null): d is JournalDoc => d !== null && d.started === redirect.started && d.pid === redirect.pid;
  if (!same(doc)) {
    // The group operation ended (its journal is gone or is another one's): nothing of it is left to do here.
    await rm(journalPath(home, vm), { force: true });
    return { outcome: 'none', op: null, removedFiles: 0, removedBytes: 0 };
  }
  const held: Lock[] = [];
  try {
    held.push(await acquireLock(path.join(groupDir(home, group), 'lock'), `group ${group}`, 'group recovery', 0));
    for (const m of (doc.members ?? []).filter((x) => x !== vm).sort()) {
      held.push(await acquireLock(path.join(vmDir(home, m), 'lock'), m, 'group recovery', 0));
    }
  } catch (err) {
    for (const l of held.reverse()) await l.release();
    if (err instanceof CloneboxError && err.code === 'VM_BUSY') {
      throw new CloneboxError('VM_BUSY', `VM ${vm} is part of an interrupted operation of group ${group} that another command is recovering`, {
        hint: 'try again in a moment',
      });
    }
    throw err;
  }
  try {
    return await recoverGroup(home, group, handlers);
  } finally {
    for (const l of held.reverse()) await l.release();
  }
}

/** A journal that parses but is not one (truncated by hand, another program's file) is damaged too. */
function isJournalDoc(d: unknown): d is JournalDoc {
  const j = d as JournalDoc | null;
  return (
    typeof j === 'object' &&
    j !== null &&
    (j.phase === 'prepare' || j.phase === 'commit') &&
    Array.isArray(j.created) &&
    j.created.every((f) => typeof f === 'string') &&
    Array.isArray(j.actions) &&
    Number.isInteger(j.done)
  );
}
