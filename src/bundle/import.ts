/**
 * `snapshot import`: a bundle (file or stdin) back into qcow2 layers, registered as a VM.
 *
 * Order of events, so that a failure anywhere leaves nothing behind:
 *  1. header, key and meta are read and checked (wrong key, damaged header or meta: stop, nothing written);
 *  2. under the VM lock: the VM must not exist (or, for a --since bundle, must hold the base by content
 *     id), no target file may exist; a journal operation starts (store/journal.ts);
 *  3. packs are applied as they arrive: each layer is written by the native qcow2 writer under a
 *     hidden temporary name beside its final place (announced to the journal first), frames are
 *     appended to a hidden spool file so that later references to their blocks can be served; at most
 *     one pack (plus the next, read ahead) is in memory;
 *  4. the seal is checked (pack count, every layer digest, totals, content ids);
 *  5. only then the journal commits: temporary files are renamed into place, the snapshot records are
 *     written and the VM record last (a VM exists exactly when its vm.json does).
 * An error before 5 rolls back (temporary files deleted); a crash before 5 is rolled back by the next
 * command that recovers this VM's journal, a crash during 5 is rolled forward.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { type FileHandle, open, readdir, rm, rmdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { abortedError, checkAborted } from '../abort.js';
import { nowIso } from '../clock.js';
import { WorkerPool } from '../content/workers.js';
import { layerPathFor, newDiskPath } from '../drivers/image.js';
import { driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError, ioError, usageError } from '../errors.js';
import { ensureDir, freeSpace } from '../fsutil.js';
import { checkName } from '../names.js';
import { checkVirtualSize, DEFAULT_MAX_VIRTUAL_SIZE, WriteBudget } from '../qcow2/budget.js';
import { Qcow2Writer } from '../qcow2/writer.js';
import { ensureContentIds, trustedContentId } from '../snapshots/identity.js';
import { currentIsClean, type Landing, LayerAssembler, landingTemp, landOverlays, type OverlayPlan, refuseExisting } from '../snapshots/landing.js';
import { appendEvents } from '../store/events.js';
import { type Home, vmDir } from '../store/home.js';
import { type Action, Journal, journalPath, recover } from '../store/journal.js';
import type { Lock } from '../store/lock.js';
import { loadVm, lockVm, type VmRecord, vmExists, vmFile } from '../store/registry.js';
import { listSnapshotRecords, type SnapshotRecord, snapshotsDir } from '../store/snapshots.js';
import { type KeySource, randomBytes } from './crypto.js';
import { type BundleSink, decodeBundle } from './decode.js';
import { BLOCK_SIZE, type Codec, type Meta, type MetaChain } from './format.js';
import { openInput } from './input.js';
import { Progress, type ProgressCallback } from './progress.js';
import { BundleReader, type ReaderKeyOptions } from './reader.js';

export interface ImportOptions {
  /** Bundle file, or a stream that gives it (the CLI passes process.stdin for '-'). */
  input: string | Readable;
  key: KeySource | null;
  /** Accept a plain bundle although a key was given (else BUNDLE_NOT_ENCRYPTED). */
  allowPlain?: boolean | undefined;
  /** Asked for the passphrase of an encrypted bundle when no key was given. */
  askPassphrase?: ReaderKeyOptions['askPassphrase'];
  /** Directory for a new VM's disks (default <home>/disks/<vm>). */
  dir?: string | undefined;
  /** Stops the import: everything it wrote is rolled back (no VM, layer, record or journal), ABORTED rejects. */
  signal?: AbortSignal | undefined;
  /** Bundle bytes read so far, of the file's size (null for a stream). */
  onProgress?: ProgressCallback | undefined;
  /** Refuse (BUDGET_EXCEEDED) once the import would write more than this many bytes; null or absent: no cap but the free space. */
  maxWrite?: number | null | undefined;
  /** Refuse (BUDGET_EXCEEDED) a bundle with a disk larger than this; default DEFAULT_MAX_VIRTUAL_SIZE (16 TiB). */
  maxVirtualSize?: number | undefined;
}

export interface ImportResult {
  vm: string;
  snapshots: string[];
  bytes_written: number;
  seconds: number;
  /** The VM's current snapshot after the import. */
  current: string | null;
  /** For a --since bundle: the local snapshot the imported ones stand on. */
  base: string | null;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

interface LayerFile extends Landing {
  /** Null for the chain's root, whose unallocated clusters read as zero. */
  backing: string | null;
  virtualSize: number;
  clusterSize: number;
}

/** Writes decoded pieces into the layers' temporary files, assembling clusters larger than a block. */
class ImportSink implements BundleSink {
  private writer: Qcow2Writer | null = null;
  private assembler: LayerAssembler | null = null;
  private spool: FileHandle | null = null;
  private spoolEnd = 0;
  private readonly frames: { at: number; length: number }[] = [];
  dataBytes = 0;
  /**
   * Where each block was first written: layer (-1: nowhere readable) and host offset in that layer's
   * file. A block placed again later is read back from there (a page-cache read) instead of decoding
   * its whole frame again; 12 bytes per unique block.
   */
  private homeLayer = new Int32Array(0);
  private homeHost = new Float64Array(0);
  private readonly layerWriters: Qcow2Writer[] = [];
  private readonly readFds: number[] = [];
  private readonly backBuf = Buffer.allocUnsafe(BLOCK_SIZE);
  private layer = -1;

  /** Layers being finished (flushed, fsynced) while the next ones are written. */
  private finishing: Promise<void>[] = [];

  /** `spoolPath` null: the bundle is a file the decoder reads again, nothing to spool. */
  constructor(
    private readonly files: LayerFile[],
    private readonly journal: Journal,
    private readonly spoolPath: string | null,
    private readonly budget: WriteBudget,
  ) {}

  async open(): Promise<void> {
    if (this.spoolPath === null) return;
    await this.journal.willCreate(this.spoolPath);
    try {
      this.spool = await open(this.spoolPath, 'wx+', 0o600);
    } catch (err) {
      throw ioError(err, 'cannot create temporary file', this.spoolPath);
    }
  }

  async beginLayer(li: number): Promise<void> {
    const f = this.files[li]!;
    this.budget.beginLayer(f.virtualSize, f.clusterSize);
    await this.journal.willCreate(f.temp);
    this.writer = await Qcow2Writer.create(f.temp, {
      mode: 0o600,
      virtualSize: f.virtualSize,
      clusterSize: f.clusterSize,
      backingFile: f.backing,
      backingFormat: f.backing ? 'qcow2' : null,
    });
    this.assembler = new LayerAssembler(this.writer, () => new CloneboxError('INTERNAL', 'cluster assembly out of order'));
    this.layer = li;
    this.layerWriters[li] = this.writer;
    try {
      // A descriptor of our own: it stays valid when the writer renames the file at its finish.
      this.readFds[li] = openSync(this.writer.tmpPath, 'r');
    } catch (err) {
      throw ioError(err, 'cannot read temporary file', this.writer.tmpPath);
    }
  }

  canReadBack(block: number): boolean {
    return block < this.homeLayer.length && this.homeLayer[block]! >= 0;
  }

  readBack(block: number, length: number): Buffer | null {
    if (!this.canReadBack(block) || length > this.backBuf.length) return null;
    const li = this.homeLayer[block]!;
    const host = this.homeHost[block]!;
    if (host + length > this.layerWriters[li]!.flushedEnd) return null; // still in the writer's batch
    let got = 0;
    while (got < length) {
      let n: number;
      try {
        n = readSync(this.readFds[li]!, this.backBuf, got, length - got, host + got);
      } catch (err) {
        throw ioError(err, 'cannot read temporary file', this.files[li]!.temp);
      }
      if (n === 0) throw new CloneboxError('IO', `temporary file is shorter than written, ${this.files[li]!.temp}`);
      got += n;
    }
    return this.backBuf.subarray(0, length);
  }

  private noteHome(block: number, host: number): void {
    if (host < 0) return;
    if (block >= this.homeLayer.length) {
      const size = Math.max(1024, block + 1, this.homeLayer.length * 2);
      const l = new Int32Array(size).fill(-1);
      l.set(this.homeLayer);
      const h = new Float64Array(size);
      h.set(this.homeHost);
      this.homeLayer = l;
      this.homeHost = h;
    }
    if (this.homeLayer[block]! >= 0) return;
    this.homeLayer[block] = this.layer;
    this.homeHost[block] = host;
  }

  async endLayer(): Promise<void> {
    const w = this.writer!;
    this.writer = null;
    this.budget.endLayer();
    if (this.assembler!.pending) throw new CloneboxError('INTERNAL', 'a cluster was left half written');
    // The layer's fsync overlaps with writing the next one; settle() waits for all of them.
    const p = w.finish();
    p.catch(() => undefined);
    this.finishing.push(p);
  }

  /** Waits until every layer is finished (written, fsynced, under its temporary name). */
  async settle(): Promise<void> {
    const all = this.finishing;
    this.finishing = [];
    const results = await Promise.allSettled(all);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  async frame(frame: number, _codec: Codec, stored: Buffer): Promise<void> {
    if (this.spool === null) return;
    this.budget.other(stored.length);
    // Blocking writes: into the page cache, faster than a thread-pool round trip per frame.
    let done = 0;
    while (done < stored.length) {
      try {
        done += writeSync(this.spool!.fd, stored, done, stored.length - done, this.spoolEnd + done);
      } catch (err) {
        throw ioError(err, 'cannot write temporary file', this.spoolPath!);
      }
    }
    this.frames[frame] = { at: this.spoolEnd, length: stored.length };
    this.spoolEnd += stored.length;
  }

  async storedBytes(frame: number): Promise<Buffer> {
    const f = this.frames[frame]!;
    const stored = Buffer.allocUnsafe(f.length);
    let got = 0;
    while (got < f.length) {
      const bytesRead = readSync(this.spool!.fd, stored, got, f.length - got, f.at + got);
      if (bytesRead === 0) throw new CloneboxError('IO', `temporary file is shorter than written, ${this.spoolPath!}`);
      got += bytesRead;
    }
    return stored;
  }

  async data(_layer: number, offset: number, block: number, length: number, data: Buffer | null): Promise<void> {
    this.budget.data(offset, length);
    this.dataBytes += length;
    // A block written as it came can be read back from the layer; one gathered into a cluster cannot.
    this.noteHome(block, await this.assembler!.block(offset, data!));
  }

  async zero(layer: number, offset: number, length: number): Promise<void> {
    // A root reads as zero where nothing is allocated: zero clusters there would only cost metadata
    // (one L2 entry per cluster, however few bytes the record took in the bundle).
    if (this.files[layer]!.backing === null) return;
    this.budget.zero(offset, length);
    await this.writer!.writeZero(offset, length);
  }

  async close(): Promise<void> {
    for (const fd of this.readFds.splice(0)) if (fd !== undefined) closeSync(fd);
    await this.spool?.close().catch(() => undefined);
    this.spool = null;
    if (this.spoolPath !== null) await rm(this.spoolPath, { force: true });
  }

  async abort(): Promise<void> {
    if (this.writer) await this.writer.abort();
    this.writer = null;
    await Promise.allSettled(this.finishing); // so that the rollback finds (and deletes) their files
    await this.close();
  }
}

export async function importBundle(home: Home, vmName: string, opts: ImportOptions): Promise<ImportResult> {
  checkName('VM', vmName);
  const r = await withReader(opts, async (reader, pool, size, t0, label) => {
    const meta = reader.meta;
    if (meta.group !== null || meta.chains.length !== 1) {
      throw usageError(
        `${label} is a group bundle (group ${meta.group?.name ?? '?'}, VMs ${meta.chains.map((c) => c.vm).join(', ')}), not one VM's`,
        `import it with \`clonebox snapshot import --group ${meta.group?.name ?? 'NAME'} ${label}\``,
      );
    }
    return importChains(home, [{ vm: vmName, chain: meta.chains[0]! }], null, reader, pool, opts, size, t0, label);
  });
  return r.members[0]!;
}

/** What a group import registers besides the members (the group's own records); see importGroupBundle. */
export interface GroupLanding {
  /** The name the group is registered under (its member snapshots are tagged with it). */
  name: string;
  /** Checked under the members' locks, before anything is written (the group must not exist...). */
  check(meta: Meta): Promise<void>;
  /**
   * Journal actions that write the group's records, given each member's snapshot records; run in the
   * commit after every member's records and before the last VM record (see importChains).
   */
  actions(meta: Meta, records: Map<string, SnapshotRecord[]>): Action[];
}

export interface GroupImportResult {
  group: string;
  members: ImportResult[];
  bytes_written: number;
  seconds: number;
}

/**
 * Imports a group bundle: every member VM under its own name (all new), and the group, or nothing.
 * `landing` writes the group's records (store/groups knows their shape).
 */
export async function importGroupChains(opts: ImportOptions, home: Home, landing: GroupLanding): Promise<GroupImportResult> {
  const r = await withReader(opts, async (reader, pool, size, t0, label) => {
    const meta = reader.meta;
    if (meta.group === null) {
      throw usageError(
        `${label} holds one VM's snapshots (VM ${meta.chains[0]!.vm}), not a group's`,
        `import it with \`clonebox snapshot import VM ${label}\``,
      );
    }
    for (const ch of meta.chains) {
      if (ch.since !== null) throw new CloneboxError('UNSUPPORTED', `VM ${ch.vm}'s chain in ${label} stands on a base; a group import takes whole chains`);
    }
    return importChains(
      home,
      meta.chains.map((chain) => ({ vm: chain.vm, chain })),
      landing,
      reader,
      pool,
      opts,
      size,
      t0,
      label,
    );
  });
  return { group: landing.name, members: r.members, bytes_written: r.members.reduce((a, m) => a + m.bytes_written, 0), seconds: (Date.now() - r.t0) / 1000 };
}

/** Opens the bundle (and the worker pool) and hands them to `fn`; aborts and cleans up around it. */
async function withReader<T>(
  opts: ImportOptions,
  fn: (reader: BundleReader, pool: WorkerPool, size: number | null, t0: number, label: string) => Promise<T>,
): Promise<T> {
  checkAborted(opts.signal);
  const t0 = Date.now();
  const input = await openInput(opts.input);
  // The workers start while the header, key and meta are read. A worker per core, not per other core:
  // this thread is about half idle, and with one worker on 2 cores the worker was the longer thread
  // (decompression and SHA-256 of every unique block), and imports with one worker were slower
  // (figures: bench/README.md, "Figures behind the code").
  const pool = WorkerPool.start(Math.max(1, Math.min(8, os.availableParallelism())));
  pool.catch(() => undefined);
  let reader: BundleReader | null = null;
  // A stream that stalls (a pipe nobody writes to) must not hold an abort up: it is destroyed, so the
  // read waiting on it fails and the import rolls back. A file is read to its end between checks.
  const stream = input.stream as Partial<Readable>;
  const onAbort = () => stream.destroy?.(abortedError());
  if (input.file === null) opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    reader = await BundleReader.open(input.stream, input.label, opts.key, { allowPlain: Boolean(opts.allowPlain), askPassphrase: opts.askPassphrase });
    if (input.file) reader.setSeekable(input.file);
    return await fn(reader, await pool, input.size, t0, input.label);
  } catch (err) {
    // Whatever the destroyed stream made the decoder say, the cause is the abort.
    if (opts.signal?.aborted) throw abortedError();
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    reader?.destroy();
    await (await pool.catch(() => null))?.close();
  }
}

/** A chain of the bundle and the VM it lands in. */
interface MemberTarget {
  vm: string;
  chain: MetaChain;
}

/**
 * Lands the chains of `members` (one for a single-VM import, one per member for a group), all or
 * nothing. Several VMs are locked in name order (the caller holds the group's lock, taken first). One
 * journal holds the whole operation: the VM's own, or for a group the group journal, with a redirect in
 * each member's directory (store/journal.ts). Its commit renames every layer into place, writes every
 * member's snapshot records, the group's records, and the VM records last. Until the commit ends the
 * members hold a journal (the redirect) and, for the last ones, no vm.json: the home sweep
 * (store/sweep.ts) that every command runs first, or any command on a member, rolls the whole import
 * forward (commit phase) or back (prepare phase), so the next command sees every member imported or none.
 */
async function importChains(
  home: Home,
  members: MemberTarget[],
  group: GroupLanding | null,
  reader: BundleReader,
  pool: WorkerPool,
  opts: ImportOptions,
  size: number | null,
  t0: number,
  label: string,
): Promise<{ members: ImportResult[]; t0: number }> {
  const meta = reader.meta;
  const order = [...members].sort((a, b) => (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0));
  const hadDir = new Map<string, boolean>();
  for (const m of order) hadDir.set(m.vm, await exists(vmDir(home, m.vm)));
  const locks: Lock[] = [];
  let committed = false;
  const madeDirs: string[] = [];
  try {
    for (const m of order) locks.push(await lockVm(home, m.vm, 'snapshot import'));
    // The group first: an interrupted import of it left redirects in the members' directories.
    if (group) await group.check(meta);
    for (const m of order) await recover(home, m.vm, driverStepHandlers);
    const plans: Plan[] = [];
    for (const m of members) {
      const dir = opts.dir === undefined ? undefined : members.length > 1 || group ? path.join(opts.dir, m.vm) : opts.dir;
      const plan = await planImport(home, m.vm, meta, m.chain, { ...opts, dir }, reader.file);
      if (plan.createdDir) madeDirs.push(plan.createdDir);
      plans.push(plan);
    }
    const anchor = order[0]!.vm;
    const j = group
      ? await Journal.beginGroup(
          home,
          group.name,
          order.map((m) => m.vm),
          `snapshot import --group ${group.name} ${order.map((m) => m.vm).join(',')}`,
          driverStepHandlers,
        )
      : await Journal.begin(home, anchor, `snapshot import ${meta.snapshots.map((s) => s.name).join(',')}`, driverStepHandlers);
    // Member snapshots of the bundle's group snapshots carry the group's (new) name.
    const tagOf = new Map<string, { name: string; snapshot: string }>();
    if (group && meta.group) {
      for (const g of meta.group.snapshots)
        for (const [vm, snap] of Object.entries(g.members)) tagOf.set(`${vm}/${snap}`, { name: group.name, snapshot: g.name });
    }
    const progress = new Progress('import', size, opts.onProgress);
    const budget = new WriteBudget({
      free: await freeSpace(path.dirname(plans[0]!.layers[0]!.final)),
      maxWrite: opts.maxWrite ?? null,
      what: `import of ${reader.file}`,
    });
    // The sink sees the bundle's layers in bundle order: chain after chain.
    const files: LayerFile[] = new Array(meta.layers.length);
    for (const p of plans) for (const [k, li] of p.layerIndexes.entries()) files[li] = p.layers[k]!;
    const sink = new ImportSink(files, j, reader.canReread ? null : plans[0]!.spool, budget);
    try {
      await sink.open();
      const res = await decodeBundle(reader, pool, sink, {
        wantData: true,
        onPack: () => {
          progress.set(reader.bytesIn);
          checkAborted(opts.signal);
        },
      });
      // Every frame is decoded: the workers end while the layers are made durable and committed.
      pool.close().catch(() => undefined); // a failure surfaces where the pool is closed for good
      await sink.settle();
      await sink.close();
      checkAborted(opts.signal); // the last moment an abort can still undo the import
      const results: ImportResult[] = [];
      const landings: Landing[] = [];
      const recordsOf = new Map<string, SnapshotRecord[]>();
      const vmRecs: VmRecord[] = [];
      for (const [mi, m] of members.entries()) {
        const plan = plans[mi]!;
        const ch = m.chain;
        // Writable overlays on the last snapshot (a new VM, or a fast-forward of a clean current state).
        const overlays = await landOverlays(j, plan.overlays, 'import');
        let written = 0;
        for (const f of [...plan.layers, ...overlays]) written += (await stat(f.temp)).size;
        landings.push(...plan.layers, ...overlays);
        const last = meta.snapshots[ch.first + ch.count - 1]!.name;
        const records: SnapshotRecord[] = [];
        for (let si = ch.first; si < ch.first + ch.count; si++) {
          const s = meta.snapshots[si]!;
          records.push({
            name: s.name,
            vm_name: m.vm,
            type: s.type,
            state: 'ready',
            created_at: s.created_at,
            description: s.description,
            parent: si === ch.first ? plan.baseName : s.parent,
            tags: s.tags,
            auto_created: s.auto_created,
            auto_policy: s.auto_policy,
            expires_at: s.expires_at,
            disks: meta.layers.flatMap((l, li) => (l.snapshot === si ? [{ target: l.target, path: files[li]!.final }] : [])),
            size_bytes: res.seal.layers.reduce((a, l, li) => a + (meta.layers[li]!.snapshot === si ? l.data_bytes : 0), 0),
            content_id: res.contentIds[si]!,
            ...(res.verified[si] ? {} : { content_id_unverified: true }),
            memory_path: null,
            origin: { kind: 'bundle', bundle: path.basename(label) },
            ...(tagOf.has(`${m.vm}/${s.name}`) ? { group: tagOf.get(`${m.vm}/${s.name}`)! } : {}),
          });
        }
        recordsOf.set(m.vm, records);
        const newCurrent = plan.overlays.length ? last : (plan.vm?.current ?? null);
        const vmRec: VmRecord = plan.vm
          ? { ...plan.vm, current: newCurrent }
          : { format: 1, name: m.vm, driver: 'image', created_at: nowIso(), disks: plan.disks, current: last };
        vmRecs.push(vmRec);
        results.push({
          vm: m.vm,
          snapshots: records.map((r) => r.name),
          bytes_written: written,
          seconds: 0,
          current: vmRec.current,
          base: plan.baseName,
        });
      }
      const actions: Action[] = landings.map((f) => ({ do: 'rename', from: f.temp, to: f.final }));
      for (const [vm, records] of recordsOf) {
        for (const r of records) actions.push({ do: 'write_json', path: path.join(snapshotsDir(home, vm), `${r.name}.json`), value: r });
      }
      if (group) actions.push(...group.actions(meta, recordsOf));
      // The anchor's VM record last: the commit point every later command can see (see above).
      const vmOrder = [...vmRecs].sort((a, b) => (a.name === anchor ? 1 : b.name === anchor ? -1 : 0));
      for (const v of vmOrder) actions.push({ do: 'write_json', path: vmFile(home, v.name), value: v });
      // Past this point the import completes even across a crash (the journal rolls it forward).
      await j.commit(actions);
      committed = true;
      // Imports register snapshots too: a long-running reader of the home (clonebox serve) tells its
      // clients, parents first. The log only notifies: a failed append does not fail what committed.
      await appendEvents(
        home,
        [...recordsOf].flatMap(([vm, records]) => records.map((r) => ({ vm, snapshot: r.name, op: 'created' as const }))),
      );
      const seconds = (Date.now() - t0) / 1000;
      return { members: results.map((r) => ({ ...r, seconds })), t0 };
    } catch (err) {
      await sink.abort().catch(() => undefined);
      await j.rollback().catch(() => undefined);
      throw err;
    }
  } finally {
    for (const l of locks.reverse()) await l.release();
    if (!committed) {
      for (const m of order) if (!hadDir.get(m.vm)) await removeEmptyVmDir(home, m.vm);
      for (const d of madeDirs) await rmdir(d).catch(() => undefined); // only when empty
    }
  }
}

/** After a failed import of a new VM: the registry directory that locking created goes again. */
async function removeEmptyVmDir(home: Home, vm: string): Promise<void> {
  const dir = vmDir(home, vm);
  if (await vmExists(home, vm)) return;
  if (await exists(journalPath(home, vm))) return;
  const left = await readdir(path.join(dir, 'snapshots')).catch(() => [] as string[]);
  if (left.length) return;
  await rm(dir, { recursive: true, force: true });
}

interface Plan {
  vm: VmRecord | null;
  disks: { target: string; path: string }[];
  /** The chain's layers, in bundle order, and their indexes among the bundle's layers. */
  layers: LayerFile[];
  layerIndexes: number[];
  overlays: OverlayPlan[];
  spool: string;
  baseName: string | null;
  /** The disks directory, when this import made it (removed again if the import fails). */
  createdDir: string | null;
}

async function planImport(home: Home, vmName: string, meta: Meta, chain: MetaChain, opts: ImportOptions, file: string): Promise<Plan> {
  const inChain = (si: number) => si >= chain.first && si < chain.first + chain.count;
  const chainLayers = meta.layers.flatMap((l, li) => (inChain(l.snapshot) ? [{ l, li }] : []));
  const chainSnaps = meta.snapshots.slice(chain.first, chain.first + chain.count);
  const lastSi = chain.first + chain.count - 1;
  // Before anything is written: a disk above the cap is refused on the meta's word alone.
  for (const { l } of chainLayers) checkVirtualSize(l.virtual_size, opts.maxVirtualSize ?? DEFAULT_MAX_VIRTUAL_SIZE, `bundle ${file}`);
  const targets = [...new Set(chainLayers.map(({ l }) => l.target))].sort();
  let vm: VmRecord | null = null;
  let baseName: string | null = null;
  const diskPath = new Map<string, string>();
  const baseLayer = new Map<string, string>();
  let fastForward = true;
  let createdDir: string | null = null;
  if (chain.since === null) {
    if (await vmExists(home, vmName)) {
      throw new CloneboxError('VM_EXISTS', `VM already exists, ${vmName}`, { hint: 'import into a new VM name, or remove the existing VM first' });
    }
    const dir = path.resolve(opts.dir ?? path.join(home.disksDir, vmName));
    if (!(await exists(dir))) createdDir = dir;
    await ensureDir(dir);
    for (const t of targets) diskPath.set(t, newDiskPath(dir, vmName, t));
  } else {
    const since = chain.since;
    const missing = (why: string) =>
      new CloneboxError(
        'BASE_MISSING',
        `${why}: the bundle holds only the snapshots after ${since.name} (content id ${since.content_id.slice(0, 12)}), VM ${vmName}`,
        {
          hint: `import the full chain first (export without --since), or export --since a snapshot this VM holds`,
        },
      );
    if (!(await vmExists(home, vmName))) throw missing(`VM ${vmName} does not exist`);
    vm = await loadVm(home, vmName);
    const snaps = await listSnapshotRecords(home, vmName);
    // Only a verified id is a base: an unverified one is a claim the data under it may not match.
    let base = snaps.find((s) => trustedContentId(s) === since.content_id);
    if (!base && snaps.some((s) => !s.content_id)) {
      await ensureContentIds(home, snaps);
      base = snaps.find((s) => trustedContentId(s) === since.content_id);
    }
    if (!base) {
      const claimed = snaps.find((s) => s.content_id === since.content_id);
      if (claimed) {
        throw missing(
          `VM ${vmName}'s snapshot ${claimed.name} carries the base's content id only as an unverified claim (it came in a bundle whose layers do not derive it)`,
        );
      }
      throw missing(`VM ${vmName} lacks the bundle's base snapshot ${since.name}`);
    }
    baseName = base.name;
    for (const s of chainSnaps) {
      if (snaps.some((x) => x.name === s.name)) {
        throw new CloneboxError('SNAPSHOT_EXISTS', `snapshot ${s.name} already exists, VM ${vmName}`, { hint: 'the VM already holds (part of) this bundle' });
      }
    }
    const vmTargets = vm.disks.map((d) => d.target).sort();
    if (vmTargets.join(',') !== targets.join(',')) {
      throw new CloneboxError('DISK_MISMATCH', `the bundle's disks (${targets.join(', ')}) differ from VM ${vmName}'s (${vmTargets.join(', ')})`);
    }
    for (const d of vm.disks) diskPath.set(d.target, d.path);
    for (const d of base.disks) baseLayer.set(d.target, d.path);
    // Fast-forward: when the VM stands on the base with no unsnapshotted changes, it moves to the
    // newest imported snapshot; otherwise its current state is left alone.
    fastForward = vm.current === base.name && (await currentIsClean(vm.disks));
  }
  const layers: LayerFile[] = [];
  const lastOf = new Map<string, string>();
  for (const { l } of chainLayers) {
    const s = meta.snapshots[l.snapshot]!;
    const disk = diskPath.get(l.target)!;
    const final = layerPathFor(disk, s.name);
    const parentLayer = l.snapshot > chain.first ? layerPathFor(disk, meta.snapshots[l.snapshot - 1]!.name) : (baseLayer.get(l.target) ?? null);
    layers.push({
      final,
      temp: landingTemp(final, 'import'),
      backing: parentLayer === null ? null : path.relative(path.dirname(final), parentLayer),
      virtualSize: l.virtual_size,
      clusterSize: l.cluster_size,
    });
    lastOf.set(l.target, final);
  }
  const lastLayers = chainLayers.map(({ l }) => l).filter((l) => l.snapshot === lastSi);
  const overlays: OverlayPlan[] = [];
  if (fastForward) {
    for (const l of lastLayers) {
      overlays.push({ final: diskPath.get(l.target)!, backing: lastOf.get(l.target)!, virtualSize: l.virtual_size, clusterSize: l.cluster_size });
    }
  }
  // Nothing that exists may be overwritten (a fast-forward replaces an empty overlay, on purpose).
  await refuseExisting(
    [...layers, ...(vm ? [] : overlays)].map((f) => f.final),
    vm ? 'remove the stray file' : 'move it away, or import with --dir DIR',
  );
  const spoolDir = path.dirname(layers[0]!.final);
  return {
    vm,
    baseName,
    layers,
    layerIndexes: chainLayers.map(({ li }) => li),
    overlays,
    createdDir,
    spool: path.join(spoolDir, `.clonebox-import-${process.pid}-${randomBytes(4).toString('hex')}.spool`),
    disks: targets.map((t) => ({ target: t, path: diskPath.get(t)! })),
  };
}
