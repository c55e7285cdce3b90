/**
 * The libvirt driver: a VM is a persistent libvirt domain whose qcow2 disks clonebox snapshots.
 *
 * Layout. A snapshot seals each disk's current image as the snapshot's layer and moves the domain to a new
 * overlay `<stem>~<snapshot>.qcow2` beside it (made by clonebox, with a relative backing name, and handed
 * to libvirt with --reuse-external). So, unlike the image driver, the current image's PATH changes with
 * each snapshot and restore (qemu holds the sealed file open and libvirt tracks it by path: it cannot be
 * renamed under a running domain). The VM record follows (PreparedSnapshot.disks).
 *
 *   create, running   virsh snapshot-create --disk-only --atomic --no-metadata --reuse-external
 *                     (+ memory file for --memory, + --quiesce when a guest agent answers)
 *   create, stopped   the same call on the inactive domain (libvirt rewrites the persistent XML), plus the
 *                     managed save image's XML when there is one
 *   restore           stop the domain, drop a stale managed save, define the persistent XML on new overlays
 *                     over the snapshot's layers; for a `full` snapshot restore the memory image onto them
 *                     (restore --paused, then managedsave) so that `start` resumes the snapshot's memory
 *   rebase current    running: virsh blockpull --base NEWBASE (the current image keeps its path, the layers
 *   (delete/merge)    above NEWBASE drop out of qemu's chain); stopped: the qcow2 engine (rebaseImage) and
 *                     a rename, as the image driver does
 *
 * Crash safety. prepare* only creates new files (announced to the journal). Every libvirt call happens in
 * the journal's commit phase as a `{do: 'driver', driver: 'libvirt', step}` action whose step is
 * idempotent: performLibvirtStep() first checks whether the step already took effect (a crash may have
 * come after libvirt acted but before the journal noted it) and only then acts.
 *
 * Metadata. libvirt keeps no snapshot metadata (--no-metadata): clonebox's records are the only ones, so
 * `virsh snapshot-list` never shows stale entries and `virsh snapshot-delete`/`snapshot-revert` cannot
 * act on clonebox's layers behind its back. See docs/libvirt.md.
 */
import { unlink } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError } from '../../errors.js';
import { pathExists } from '../../fsutil.js';
import { createOverlay } from '../../qcow2/overlay.js';
import { imageGeometry } from '../../qcow2/probe.js';
import { rebaseImage } from '../../qcow2/rebase.js';
import { type Action, type Journal, notTaken, type StepHandler, type StepResult } from '../../store/journal.js';
import type { VmRecord } from '../../store/registry.js';
import type { SnapshotRecord } from '../../store/snapshots.js';
import type { LayerRef, PreparedSnapshot, PreparedSwitch, SnapshotDriver } from '../driver.js';
import { buildSnapshotXml, type DiskInfo, type DomainXml, parseDomainXml } from './domain-xml.js';
import { DEFAULT_URI, Virsh } from './virsh.js';

// --- journal steps ------------------------------------------------------------------------------------

interface Where {
  uri: string;
  domain: string;
}

export type LibvirtStep =
  /** External snapshot of `disks` (from → to); memory too when memoryFile is set and the domain runs. */
  | (Where & { op: 'snapshot'; name: string; disks: { target: string; from: string; to: string }[]; memoryFile: string | null; quiesce: boolean })
  /** Domain off (destroy) and, with dropManagedSave, no managed save image left. */
  | (Where & { op: 'stop'; dropManagedSave: boolean })
  /** Persistent XML (and the managed save image's XML, if any) point at `disks`, with no stale chains. */
  | (Where & { op: 'sync_xml'; disks: LayerRef[] })
  /** Memory state from `memoryFile` onto `disks`, left as a managed save image (the next start resumes it). */
  | (Where & { op: 'load_memory'; memoryFile: string; disks: LayerRef[] })
  /** Running domain: pull the layers above `base` into `path` (disk `target`); base null = all. */
  | (Where & { op: 'block_pull'; target: string; path: string; base: string | null });

type SnapshotStep = Extract<LibvirtStep, { op: 'snapshot' }>;

/**
 * The snapshots of a group's libvirt members, taken at one point (docs/groups.md): every member that
 * ran when the group snapshot was prepared is held (`pause`: virsh suspend; `freeze`: the guest agent
 * freezes its filesystems) from before the first snapshot to after the last.
 */
interface GroupSnapshotStep {
  op: 'group_snapshot';
  members: { snap: SnapshotStep; hold: 'pause' | 'freeze' | 'none' }[];
}

export interface LibvirtAction {
  do: 'driver';
  driver: 'libvirt';
  step: LibvirtStep | GroupSnapshotStep;
}

function action(step: LibvirtStep | GroupSnapshotStep): Action {
  return { do: 'driver', driver: 'libvirt', step };
}

/**
 * One journal action taking the snapshots that the members' own `snapshot` actions (from
 * prepareSnapshot) would take one by one, with every running member held meanwhile. `quiesce`: hold a
 * member whose guest agent was found answering by freezing it, the others by pausing them. The step
 * reports the notes `pause_ms`, `consistency` and `quiesced` (all held members frozen).
 */
export async function groupSnapshotAction(memberActions: Action[]): Promise<Action> {
  const members: GroupSnapshotStep['members'] = [];
  for (const a of memberActions) {
    const step = a.do === 'driver' && a.driver === 'libvirt' ? (a.step as LibvirtStep) : null;
    if (step?.op !== 'snapshot') throw new CloneboxError('INTERNAL', 'a group snapshot step is made of libvirt snapshot steps only');
    const running = (await new Virsh({ uri: step.uri }).state(step.domain)) === 'running';
    // The member's own step no longer quiesces: freezing is done here, for all members at once.
    members.push({ snap: { ...step, quiesce: false }, hold: !running ? 'none' : step.quiesce ? 'freeze' : 'pause' });
  }
  return action({ op: 'group_snapshot', members });
}

/** See GroupSnapshotStep. Idempotent: members already switched are skipped; held members are always released. */
async function performGroupSnapshot(s: GroupSnapshotStep): Promise<StepResult | undefined> {
  const virsh = (m: GroupSnapshotStep['members'][number]) => new Virsh({ uri: m.snap.uri });
  const todo: GroupSnapshotStep['members'] = [];
  const states = new Map<GroupSnapshotStep['members'][number], string>();
  for (const m of s.members) {
    const v = virsh(m);
    const st = await v.state(m.snap.domain);
    states.set(m, st);
    const active = st !== 'shut off' && st !== 'crashed';
    const now = await currentSources(
      v,
      m.snap.domain,
      m.snap.disks.map((d) => d.target),
      active,
    );
    if (
      sameList(
        now,
        m.snap.disks.map((d) => d.to),
      )
    )
      continue;
    if (
      !sameList(
        now,
        m.snap.disks.map((d) => d.from),
      )
    ) {
      throw new CloneboxError(
        'DOMAIN_CHANGED',
        `the domain's disks changed while the group snapshot was being taken (${now.join(', ')}), domain ${m.snap.domain}`,
      );
    }
    todo.push(m);
  }
  const warnings: string[] = [];
  type Member = GroupSnapshotStep['members'][number];
  const held = new Map<Member, 'pause' | 'freeze'>();
  // A member held by an attempt that was killed is still paused (or frozen): it is released below too.
  for (const m of s.members) if (m.hold === 'pause' && states.get(m) === 'paused') held.set(m, 'pause');
  const toHold = s.members.filter((m) => todo.length > 0 && m.hold !== 'none' && states.get(m) === 'running');
  for (const m of todo) if (m.snap.memoryFile !== null) await unlink(m.snap.memoryFile).catch(() => undefined); // partial: start again
  const t0 = performance.now();
  // Freezing goes through each guest's agent (it may not answer: that member is paused instead).
  await Promise.all(
    toHold
      .filter((m) => m.hold === 'freeze')
      .map(async (m) => {
        const v = virsh(m);
        try {
          await v.fsFreeze(m.snap.domain);
          held.set(m, 'freeze');
        } catch (err) {
          await v.fsThaw(m.snap.domain).catch(() => undefined);
          warnings.push(`the guest agent of domain ${m.snap.domain} could not freeze its filesystems (${(err as Error).message}); paused it instead`);
        }
      }),
  );
  const frozen = held.size > 0;
  const windows: { from: number; to: number }[] = [];
  const toPause = toHold.filter((m) => !held.has(m));
  for (const m of toPause) held.set(m, 'pause');
  // Pause, every snapshot and resume (or thaw) in one virsh process per connection: the window holds
  // libvirt's work and nothing else.
  const failures: string[] = [];
  await Promise.all(
    [...new Set(s.members.map((m) => m.snap.uri))].map(async (uri) => {
      const mine = (list: Member[]) => list.filter((m) => m.snap.uri === uri);
      const snaps = mine(todo);
      const xmls: string[] = [];
      const cmds: string[][] = [];
      cmds.push(['mark', 'held']);
      for (const m of mine(toPause)) cmds.push(['suspend', m.snap.domain]);
      for (const m of snaps) {
        const st = states.get(m)!;
        const memory = m.snap.memoryFile !== null && st !== 'shut off' && st !== 'crashed' ? m.snap.memoryFile : null;
        xmls.push(
          buildSnapshotXml({
            name: m.snap.name,
            disks: m.snap.disks.map((d) => ({ target: d.target, file: d.to })),
            ...(memory === null ? {} : { memoryFile: memory }),
          }),
        );
        cmds.push([
          'snapshot-create',
          m.snap.domain,
          '--xmlfile',
          `@xml${xmls.length - 1}`,
          '--atomic',
          ...(memory === null ? ['--disk-only'] : []),
          '--no-metadata',
          '--reuse-external',
        ]);
      }
      for (const [m, how] of held) if (m.snap.uri === uri) cmds.push(how === 'freeze' ? ['domfsthaw', m.snap.domain] : ['resume', m.snap.domain]);
      cmds.push(['mark', 'released']);
      if (cmds.length === 2) return;
      const memory = snaps.some((m) => m.snap.memoryFile !== null);
      const { stderr, marks } = await new Virsh({ uri }).batch(cmds, { xmls, timeoutMs: memory ? 600_000 : 60_000 });
      const from = marks.get('held');
      const to = marks.get('released');
      if (from !== undefined && to !== undefined && to > from) windows.push({ from: frozen ? t0 : from, to });
      const lines = stderr
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l.startsWith('error:'));
      if (lines.length) failures.push(lines.join(' '));
    }),
  );
  // The window as virsh's output shows it: from the line it wrote just before the first pause to the
  // one just after the last resume (a frozen member's window starts at its freeze, before virsh ran).
  // Without those lines (an older virsh): from before the pause to after the virsh process ended.
  const pauseMs =
    held.size === 0
      ? null
      : Math.round(windows.length > 0 ? Math.max(...windows.map((w) => w.to)) - Math.min(...windows.map((w) => w.from)) : performance.now() - t0);
  // What took effect: every member released, and which snapshots were taken.
  for (const [m, how] of held) {
    const v = virsh(m);
    if (how === 'pause' && (await v.state(m.snap.domain).catch(() => 'unknown')) === 'paused') {
      await v.resume(m.snap.domain).catch((err: Error) => warnings.push(`domain ${m.snap.domain} could not be resumed (${err.message}); resume it with virsh`));
    }
  }
  let failure: unknown = null;
  for (const m of todo) {
    const v = virsh(m);
    const now = await currentSources(
      v,
      m.snap.domain,
      m.snap.disks.map((d) => d.target),
      await v.isActive(m.snap.domain),
    ).catch(() => null);
    if (
      now === null ||
      !sameList(
        now,
        m.snap.disks.map((d) => d.to),
      )
    ) {
      failure ??= new CloneboxError(
        'LIBVIRT_ERROR',
        `cannot create the group snapshot of domain ${m.snap.domain}: ${failures.join(' ') || 'its disks were not switched'}`,
      );
    }
  }
  if (failure !== null) {
    // Nothing was switched (libvirt's --atomic per domain, and every member still on its old images):
    // the whole group snapshot can be undone. Anything else is finished by the next command.
    const definite = failure instanceof CloneboxError && failure.code !== 'LIBVIRT_TIMEOUT' && failure.code !== 'LIBVIRT_UNAVAILABLE';
    if (definite && todo.length === s.members.length) {
      let none = true;
      for (const m of s.members) {
        const v = virsh(m);
        const after = await currentSources(
          v,
          m.snap.domain,
          m.snap.disks.map((d) => d.target),
          await v.isActive(m.snap.domain),
        ).catch(() => null);
        if (
          after === null ||
          !sameList(
            after,
            m.snap.disks.map((d) => d.from),
          )
        )
          none = false;
      }
      if (none) throw notTaken(failure as Error);
    }
    throw failure;
  }
  for (const m of s.members) {
    await syncXml(
      virsh(m),
      m.snap.domain,
      m.snap.disks.map((d) => ({ target: d.target, path: d.to })),
    );
  }
  if (todo.length === 0) return warnings.length ? { warnings } : undefined;
  const hows = [...held.values()];
  const consistency = hows.length === 0 ? 'locks' : hows.every((h) => h === 'freeze') ? 'frozen' : hows.every((h) => h === 'pause') ? 'paused' : 'mixed';
  return { warnings, notes: { pause_ms: pauseMs, consistency, quiesced: hows.length > 0 && consistency === 'frozen' } };
}

/**
 * The journal runs `{do: 'driver', driver: 'libvirt'}` actions through this handler, which
 * drivers/registry.ts loads on demand (journal recovery in a new process may not have loaded this
 * module yet). The steps in a journal are the ones action() wrote.
 */
export const libvirtStepHandler: StepHandler = (step) =>
  (step as GroupSnapshotStep).op === 'group_snapshot' ? performGroupSnapshot(step as GroupSnapshotStep) : performLibvirtStep(step as LibvirtStep);

const sameList = (a: (string | null)[], b: (string | null)[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** Sources of `targets` in the live XML (running) or the persistent XML (stopped). */
async function currentSources(v: Virsh, domain: string, targets: string[], active: boolean): Promise<(string | null)[]> {
  const x = parseDomainXml(await v.dumpXml(domain, active ? {} : { inactive: true }));
  return targets.map((t) => x.disks().find((d) => d.target === t)?.source ?? null);
}

/** Points the given disks at `disks` paths with no `<backingStore>` (libvirt reads the image headers). */
function pointAt(x: DomainXml, disks: LayerRef[]): DomainXml {
  for (const d of disks) x.setDiskSource(d.target, d.path);
  return x;
}

async function syncXml(v: Virsh, domain: string, disks: LayerRef[]): Promise<void> {
  const persistent = parseDomainXml(await v.dumpXml(domain, { inactive: true, secure: true }));
  const before = persistent.toString();
  const after = pointAt(persistent, disks).toString();
  if (after !== before) await v.define(after);
  if (await v.hasManagedSave(domain)) {
    // libvirt 9.0 lets offline disk changes proceed without touching the managed save image: the next
    // start would resume on the old (sealed) images. Keep it in step.
    const ms = parseDomainXml(await v.managedSaveXml(domain));
    const msBefore = ms.toString();
    const msAfter = pointAt(ms, disks).toString();
    if (msAfter !== msBefore) await v.managedSaveDefine(domain, msAfter);
  }
}

/**
 * Performs one journal step; safe to call again after a crash at any point inside it. A `snapshot` step
 * reports the note `quiesced` (true when the guest agent froze the filesystems for it) and the warning
 * of a quiesce that could not be had; one that finds its work already done reports nothing.
 */
export async function performLibvirtStep(s: LibvirtStep): Promise<StepResult | undefined> {
  const v = new Virsh({ uri: s.uri });
  switch (s.op) {
    case 'snapshot': {
      const active = await v.isActive(s.domain);
      const targets = s.disks.map((d) => d.target);
      const now = await currentSources(v, s.domain, targets, active);
      if (
        sameList(
          now,
          s.disks.map((d) => d.to),
        )
      ) {
        await syncXml(
          v,
          s.domain,
          s.disks.map((d) => ({ target: d.target, path: d.to })),
        );
        return undefined; // done before a crash (whether it was quiesced is not known: not claimed)
      }
      if (
        !sameList(
          now,
          s.disks.map((d) => d.from),
        )
      ) {
        throw new CloneboxError('DOMAIN_CHANGED', `the domain's disks changed while the snapshot was being taken (${now.join(', ')}), domain ${s.domain}`);
      }
      // A memory file left by an attempt that did not complete is partial: start again.
      let memoryFile = s.memoryFile;
      if (memoryFile !== null) await unlink(memoryFile).catch(() => undefined);
      // The domain may have stopped since prepare (someone else's virsh): take the disks anyway; a
      // `full` snapshot without its memory file restores as a disk snapshot.
      if (!active) memoryFile = null;
      const spec = {
        name: s.name,
        disks: s.disks.map((d) => ({ target: d.target, file: d.to })),
        quiesce: s.quiesce && active,
        ...(memoryFile === null ? {} : { memoryFile }),
      };
      let taken: Awaited<ReturnType<Virsh['createSnapshot']>>;
      try {
        taken = await v.createSnapshot(s.domain, spec);
      } catch (err) {
        // libvirt refused (--atomic: no disk switched). Retrying in every later command would refuse
        // again and wedge the VM, so when the domain is verifiably still on the old images the
        // operation is undone instead. A timeout or a lost daemon says nothing about what libvirt did.
        const definite = err instanceof CloneboxError && err.code !== 'LIBVIRT_TIMEOUT' && err.code !== 'LIBVIRT_UNAVAILABLE';
        if (definite) {
          const after = await currentSources(v, s.domain, targets, await v.isActive(s.domain)).catch(() => null);
          if (
            after !== null &&
            sameList(
              after,
              s.disks.map((d) => d.from),
            )
          )
            throw notTaken(err);
        }
        throw err;
      }
      await syncXml(
        v,
        s.domain,
        s.disks.map((d) => ({ target: d.target, path: d.to })),
      );
      return { warnings: taken.warnings, notes: { quiesced: taken.quiesced } };
    }
    case 'stop': {
      await v.ensureStopped(s.domain);
      if (s.dropManagedSave && (await v.hasManagedSave(s.domain))) await v.managedSaveRemove(s.domain);
      return undefined;
    }
    case 'sync_xml': {
      await syncXml(v, s.domain, s.disks);
      return undefined;
    }
    case 'load_memory': {
      if (!(await pathExists(s.memoryFile))) return undefined; // a full snapshot whose memory could not be taken
      if (await v.hasManagedSave(s.domain)) return undefined; // done (the stale one was dropped by 'stop')
      if (!(await v.isActive(s.domain))) {
        const xml = pointAt(parseDomainXml(await v.saveImageXml(s.memoryFile, s.domain)), s.disks).toString();
        await v.restore(s.memoryFile, { xml, paused: true, domain: s.domain });
      }
      // Running (paused) on the restored memory: park it where `virsh start` resumes it.
      await v.managedSave(s.domain, { running: true });
      return undefined;
    }
    case 'block_pull': {
      const x = parseDomainXml(await v.dumpXml(s.domain));
      const d = x.disks().find((k) => k.target === s.target);
      if (!d || d.source !== s.path) {
        throw new CloneboxError('DOMAIN_CHANGED', `disk ${s.target} is no longer ${s.path}, domain ${s.domain}`);
      }
      const below = d.backingChain?.[0]?.source ?? null;
      if (below === s.base) return undefined; // done
      await v.blockPull(s.domain, s.target, { ...(s.base === null ? {} : { base: s.base }), keepRelative: true });
      return undefined;
    }
  }
}

// --- registration -------------------------------------------------------------------------------------

export interface DomainDisks {
  domain: string;
  uri: string;
  disks: LayerRef[];
  warnings: string[];
}

/**
 * Refuses to go on while the domain runs (`vm remove --delete-files`: deleting the images qemu has open
 * would destroy the running guest's disks). A domain that no longer exists runs nothing.
 */
export async function checkDomainStopped(domain: string, uri: string, what: string): Promise<void> {
  const v = new Virsh({ uri });
  if (!(await v.exists(domain))) return;
  if (await v.isActive(domain)) {
    throw CloneboxError.DOMAIN_RUNNING(`${what}: libvirt domain ${domain} is running on these files`, {
      hint: `stop it first (\`virsh -c ${uri} shutdown ${domain}\`), then run the command again`,
    });
  }
}

/**
 * What `vm add --libvirt` registers: the domain's writable qcow2 disks (targets and current images).
 * Refuses transient domains, non-qcow2 writable disks and domains that libvirt holds snapshot metadata
 * for (they would go stale under clonebox).
 */
export async function inspectDomain(domain: string, uri = DEFAULT_URI): Promise<DomainDisks> {
  const v = new Virsh({ uri });
  if (!(await v.exists(domain))) {
    throw new CloneboxError('DOMAIN_NOT_FOUND', `no such libvirt domain at ${uri}, ${domain}`, { hint: `see \`virsh -c ${uri} list --all\`` });
  }
  if (!(await v.isPersistent(domain))) {
    throw new CloneboxError('LIBVIRT_UNSUPPORTED', `the domain is transient (clonebox edits its persistent definition), domain ${domain}`, {
      hint: '`virsh define` it first',
    });
  }
  const existing = await v.snapshotList(domain);
  if (existing.length > 0) {
    throw new CloneboxError('LIBVIRT_UNSUPPORTED', `libvirt already holds snapshots of this domain (${existing.join(', ')}), domain ${domain}`, {
      hint: 'delete or merge them with virsh first: clonebox must be the only one layering its disks',
    });
  }
  const active = await v.isActive(domain);
  const x = parseDomainXml(await v.dumpXml(domain, active ? {} : { inactive: true }));
  const warnings: string[] = [];
  const disks: LayerRef[] = [];
  for (const d of x.snapshotDisks()) {
    if (d.type !== 'file' || d.format !== 'qcow2') {
      throw new CloneboxError(
        'LIBVIRT_UNSUPPORTED',
        `disk ${d.target} is ${d.type === 'file' ? `a ${d.format ?? 'unknown'} image` : `a ${d.type} disk`}, only qcow2 files are supported, domain ${domain}`,
        {
          hint: 'convert it with `qemu-img convert -O qcow2`, or mark it <readonly/> or <shareable/> to leave it out',
        },
      );
    }
    disks.push({ target: d.target, path: d.source! });
  }
  if (disks.length === 0) throw new CloneboxError('LIBVIRT_UNSUPPORTED', `the domain has no writable qcow2 disk, domain ${domain}`);
  const skipped = x.disks().filter((d) => !disks.some((k) => k.target === d.target));
  if (skipped.length > 0) warnings.push(`not snapshotted (read-only, shared or removable): ${skipped.map((d) => d.target).join(', ')}`);
  return { domain, uri, disks, warnings };
}

// --- the driver ---------------------------------------------------------------------------------------

function stemOf(p: string): string {
  return path
    .basename(p)
    .replace(/\.(qcow2|qcow|img)$/i, '')
    .replace(/~.*$/, '');
}

/** A new file name `<stem>~<label>.qcow2` beside `current`, not used yet. */
async function freshPath(current: string, label: string, taken: Set<string>): Promise<string> {
  const dir = path.dirname(current);
  for (let i = 1; ; i++) {
    const p = path.join(dir, `${stemOf(current)}~${label}${i === 1 ? '' : `-${i}`}.qcow2`);
    if (!taken.has(p) && !(await pathExists(p))) {
      taken.add(p);
      return p;
    }
  }
}

export class LibvirtDriver implements SnapshotDriver {
  readonly name = 'libvirt' as const;

  private where(vm: VmRecord): Where & { virsh: Virsh } {
    if (!vm.libvirt) throw new CloneboxError('STORE_CORRUPT', `VM record has no libvirt domain, ${vm.name}`);
    return { uri: vm.libvirt.uri, domain: vm.libvirt.domain, virsh: new Virsh({ uri: vm.libvirt.uri }) };
  }

  /** The domain's view of the VM's disks must be clonebox's: anything else was changed behind its back. */
  private async checkDisks(vm: VmRecord, v: Virsh, domain: string, active: boolean): Promise<DiskInfo[]> {
    const x = parseDomainXml(await v.dumpXml(domain, active ? {} : { inactive: true }));
    const disks = vm.disks.map((d) => x.disks().find((k) => k.target === d.target));
    const bad = vm.disks.filter((d, i) => disks[i]?.source !== d.path);
    if (bad.length > 0) {
      throw new CloneboxError(
        'DOMAIN_CHANGED',
        `the domain's disks are not where clonebox left them (${bad.map((d) => `${d.target}: expected ${d.path}, found ${disks[vm.disks.indexOf(d)]?.source ?? 'none'}`).join('; ')}), domain ${domain}`,
        {
          hint: 'point the domain back at those images, or re-register the VM',
        },
      );
    }
    return disks as DiskInfo[];
  }

  async prepareSnapshot(vm: VmRecord, name: string, opts: { memory: boolean; quiesce: boolean }, j: Journal): Promise<PreparedSnapshot> {
    const { uri, domain, virsh } = this.where(vm);
    const active = await virsh.isActive(domain);
    if (opts.memory && !active) {
      throw new CloneboxError('VM_NOT_RUNNING', `full snapshot requires a running VM, ${vm.name}`, {
        hint: `start it (\`virsh -c ${uri} start ${domain}\`) or take a disk snapshot`,
      });
    }
    await this.checkDisks(vm, virsh, domain, active);
    const warnings: string[] = [];
    let quiesce = false;
    if (opts.quiesce && opts.memory) {
      // libvirt quiesces disk-only snapshots only; a memory snapshot needs none (the guest's unwritten
      // data is in the saved RAM and is written out when it resumes).
      warnings.push(
        `--quiesce is not needed with --memory (the saved memory holds what the guest had not written); snapshot ${name} of domain ${domain} is taken without freezing`,
      );
    } else if (opts.quiesce && active) {
      const agent = await virsh.agentStatus(domain);
      if (agent === 'connected' && (await virsh.agentPing(domain, 5))) quiesce = true;
      else {
        warnings.push(
          agent === 'none'
            ? `no guest agent channel in domain ${domain}; snapshot ${name} is crash-consistent, not quiesced`
            : `the guest agent of domain ${domain} does not answer; snapshot ${name} is crash-consistent, not quiesced`,
        );
      }
    }
    const taken = new Set<string>();
    const plan: { target: string; from: string; to: string }[] = [];
    for (const d of vm.disks) plan.push({ target: d.target, from: d.path, to: await freshPath(d.path, name, taken) });
    const memoryFile = opts.memory ? path.join(path.dirname(vm.disks[0]!.path), `${stemOf(vm.disks[0]!.path)}@${name}.mem`) : null;
    if (memoryFile !== null && (await pathExists(memoryFile))) {
      throw new CloneboxError('SNAPSHOT_EXISTS', `memory file already exists, ${memoryFile}`, { hint: 'choose another snapshot name or move the file away' });
    }
    await j.willCreate(...plan.map((p) => p.to), ...(memoryFile === null ? [] : [memoryFile]));
    for (const p of plan) await createOverlay(p.to, p.from, await imageGeometry(p.from));
    return {
      layers: plan.map((p) => ({ target: p.target, path: p.from })),
      type: opts.memory ? 'full' : 'disk',
      memoryPath: memoryFile,
      actions: [action({ op: 'snapshot', uri, domain, name, disks: plan, memoryFile, quiesce })],
      disks: plan.map((p) => ({ target: p.target, path: p.to })),
      warnings,
    };
  }

  async prepareRestore(vm: VmRecord, snap: SnapshotRecord, j: Journal): Promise<PreparedSwitch> {
    const { uri, domain, virsh } = this.where(vm);
    if (!(await virsh.exists(domain))) throw new CloneboxError('DOMAIN_NOT_FOUND', `no such libvirt domain at ${uri}, ${domain}`);
    const taken = new Set<string>();
    const plan: { target: string; layer: string; next: string; old: string }[] = [];
    for (const d of vm.disks) {
      const layer = snap.disks.find((l) => l.target === d.target);
      if (!layer) throw new CloneboxError('STORE_CORRUPT', `snapshot ${snap.name} has no layer for disk ${d.target}, ${vm.name}`);
      plan.push({ target: d.target, layer: layer.path, next: await freshPath(layer.path, `${snap.name}.restored`, taken), old: d.path });
    }
    await j.willCreate(...plan.map((p) => p.next));
    for (const p of plan) await createOverlay(p.next, p.layer, await imageGeometry(p.layer));
    const disks = plan.map((p) => ({ target: p.target, path: p.next }));
    const actions: Action[] = [action({ op: 'stop', uri, domain, dropManagedSave: true }), action({ op: 'sync_xml', uri, domain, disks })];
    if (snap.type === 'full' && snap.memory_path) actions.push(action({ op: 'load_memory', uri, domain, memoryFile: snap.memory_path, disks }));
    // The discarded current images: never a snapshot's layer (a snapshot moves the domain off them).
    for (const p of plan) actions.push({ do: 'unlink', path: p.old });
    return { actions, disks };
  }

  async prepareRebaseCurrent(vm: VmRecord, newBase: Map<string, string | null>, j: Journal): Promise<PreparedSwitch> {
    const { uri, domain, virsh } = this.where(vm);
    const active = await virsh.isActive(domain);
    await this.checkDisks(vm, virsh, domain, active);
    const disks = vm.disks.map((d) => ({ ...d }));
    const actions: Action[] = [];
    if (active) {
      for (const d of vm.disks) actions.push(action({ op: 'block_pull', uri, domain, target: d.target, path: d.path, base: newBase.get(d.target) ?? null }));
    } else {
      const plan = vm.disks.map((d) => ({
        disk: d.path,
        next: path.join(path.dirname(d.path), `.${path.basename(d.path)}.merge-${process.pid}.new`),
        base: newBase.get(d.target) ?? null,
      }));
      await j.willCreate(...plan.map((p) => p.next));
      for (const p of plan) {
        await rebaseImage(p.disk, p.base, p.next);
        actions.push({ do: 'rename', from: p.next, to: p.disk });
      }
    }
    // The persistent XML (and a managed save image) may still describe the old chain: libvirt would
    // trust it over the headers at the next start.
    actions.push(action({ op: 'sync_xml', uri, domain, disks }));
    return { actions, disks };
  }

  async configFingerprint(vm: VmRecord): Promise<string> {
    const { domain, virsh } = this.where(vm);
    const xml = await virsh.dumpXml(domain, { inactive: true });
    // Every snapshot points the disks at new overlays: their sources and backing chains are clonebox's
    // doing, not a configuration change.
    const normalised = xml.replace(/<disk\b[\s\S]*?<\/disk>/g, (disk) =>
      disk
        .replace(/<backingStore\b[^>]*\/>/g, '')
        .replace(/<backingStore\b[\s\S]*<\/backingStore>/g, '')
        .replace(/<source\b[^>]*\/>/g, '')
        .replace(/<source\b[\s\S]*?<\/source>/g, ''),
    );
    const { createHash } = await import('node:crypto');
    return createHash('sha256').update(normalised.replace(/\s+/g, ' ')).digest('hex');
  }

  async start(vm: VmRecord): Promise<void> {
    const { domain, virsh } = this.where(vm);
    if (!(await virsh.isActive(domain))) await virsh.start(domain);
  }
}
