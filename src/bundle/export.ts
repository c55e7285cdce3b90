/**
 * `snapshot export`: a snapshot chain (root..N, or the layers after BASE) into one bundle.
 *
 * Pipeline, per layer in bundle order:
 *   main thread   reads the layer's map and data (blocks.ts), cuts blocks into ~4 MiB batches
 *   worker        hashes every block of a batch (SHA-256)
 *   main thread   looks each block id up in the dedup index, in batch order: known → a reference,
 *                 new → gets the next block number
 *   worker        compresses the batch's new blocks into one zstd frame (the bytes never came back)
 *   main thread   appends the frame and the batch's records to the current pack, in batch order;
 *                 a full pack is sealed and written as one tar entry
 * Batches in flight are bounded (two per worker), so memory does not grow with the disk.
 */

import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { link, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { checkAborted } from '../abort.js';
import { nowIso } from '../clock.js';
import { type Batch, Batcher } from '../content/batcher.js';
import { compressBound } from '../content/codec.js';
import { BlockIndex } from '../content/dedup.js';
import { LayerDigest } from '../content/digest.js';
import { openLayer } from '../content/layer.js';
import type { WorkerReply } from '../content/worker.js';
import { WorkerPool } from '../content/workers.js';
import { driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError, ioError, usageError } from '../errors.js';
import { fsyncDir, tempDone, tempPathFor } from '../fsutil.js';
import { checkName } from '../names.js';
import { checkedBackingChain } from '../qcow2/backing.js';
import { Qcow2Image } from '../qcow2/reader.js';
import { contentId, ensureContentIds } from '../snapshots/identity.js';
import type { Home } from '../store/home.js';
import { recover } from '../store/journal.js';
import type { Lock } from '../store/lock.js';
import { type Pin, pinSnapshots } from '../store/pins.js';
import { loadVm, lockVm } from '../store/registry.js';
import { listSnapshotRecords, readSnapshotRecord, type SnapshotRecord, saveSnapshotRecord } from '../store/snapshots.js';
import { blockId, deriveMaster, encKey, idKey, type KeySource, keyCheck, randomBytes, Sealer } from './crypto.js';
import {
  BLOCK_SIZE,
  Codec,
  ENTRY_HEADER,
  ENTRY_META,
  ENTRY_SEAL,
  EntryKind,
  FRAME_TARGET,
  KDF_MEMLIMIT,
  KDF_OPSLIMIT,
  KeyKind,
  type Meta,
  type MetaChain,
  type MetaGroup,
  type MetaLayer,
  PACK_TARGET,
  packEntryName,
  type Seal,
  type SealTotals,
} from './format.js';
import { encodeHeader, encodeJson, encodeMeta, headerPrefix } from './manifest.js';
import { checkExportOutput } from './output.js';
import { PackWriter } from './packs.js';
import { Progress, type ProgressCallback } from './progress.js';
import { TarWriter } from './tar.js';

export interface ExportOptions {
  /** Last snapshot to include (default: the current one). */
  name?: string | undefined;
  /** Include only the snapshots after this one. */
  since?: string | undefined;
  /** File path, or a stream that takes the bundle (the CLI passes its standard output for '-'). */
  output: string | Writable;
  /** Encrypt with this key (null: plain bundle). */
  key: KeySource | null;
  /** zstd level, 1..19. */
  level?: number;
  /** Replace an existing bundle at `output` (never a file of the home or of a VM; see output.ts). */
  force?: boolean | undefined;
  /** Stops the export: the output file is not created (its temporary is deleted), ABORTED rejects. */
  signal?: AbortSignal | undefined;
  /** Bytes of layer data read so far, of the chain's total (counted first only when this is given). */
  onProgress?: ProgressCallback | undefined;
}

export interface ExportResult {
  file: string;
  /** Every snapshot of the bundle, chain after chain. */
  snapshots: string[];
  /** Per VM, its snapshots in the bundle (one chain unless it is a group bundle). */
  chains: { vm: string; snapshots: string[] }[];
  /** The group of a group bundle, else null. */
  group: string | null;
  logical_bytes: number;
  unique_bytes: number;
  stored_bytes: number;
  blocks: number;
  unique_blocks: number;
  encrypted: boolean;
  seconds: number;
  bundle_bytes: number;
  since: string | null;
}

interface LayerPlan {
  meta: MetaLayer;
  path: string;
  resolved: boolean;
}

/** Header, sealer and block-id key for a new bundle. */
async function newHeader(key: KeySource | null, version: 1 | 2): Promise<{ header: Buffer; sealer: Sealer; idk: Buffer | null }> {
  const bundleId = randomBytes(16);
  if (!key) {
    const prefix = headerPrefix({ version, encrypted: false, bundleId, keyKind: KeyKind.None, opslimit: 0, memlimit: 0, salt: Buffer.alloc(16) });
    const { bytes, checksum } = encodeHeader(prefix, Buffer.alloc(32));
    return { header: bytes, sealer: new Sealer(checksum, null), idk: null };
  }
  const passphrase = key.kind === 'passphrase';
  const kdf = passphrase ? { salt: randomBytes(16), opslimit: KDF_OPSLIMIT, memlimit: KDF_MEMLIMIT } : { salt: Buffer.alloc(16), opslimit: 0, memlimit: 0 };
  const master = await deriveMaster(key, kdf);
  const prefix = headerPrefix({
    version,
    encrypted: true,
    bundleId,
    keyKind: passphrase ? KeyKind.Passphrase : KeyKind.KeyFile,
    ...kdf,
  });
  const { bytes, checksum } = encodeHeader(prefix, keyCheck(master, prefix));
  const sealer = new Sealer(checksum, encKey(master, bundleId));
  const idk = idKey(master);
  master.fill(0);
  return { header: bytes, sealer, idk };
}

/** Test knob: smaller packs and frames (to exercise multi-pack bundles with little data). */
function envSize(name: string, dflt: number): number {
  const v = Number(process.env[name]);
  return Number.isInteger(v) && v >= BLOCK_SIZE && v <= dflt ? v : dflt;
}

/** Written bytes between background datasyncs of an export to a file. */
const BACKGROUND_SYNC_BYTES = 32 * 1024 * 1024;

function notFound(vm: string, name: string): CloneboxError {
  return new CloneboxError('SNAPSHOT_NOT_FOUND', `no such snapshot ${name}, VM ${vm}`, { hint: `see \`clonebox snapshot list ${vm}\`` });
}

/** What to export of one VM: snapshots root..name (default: its current one), or those after `since`. */
export interface ChainTarget {
  vm: string;
  name?: string | undefined;
  since?: string | undefined;
}

/** One VM's chain, resolved and checked under its lock. */
interface ChainPlan {
  vm: string;
  since: MetaChain['since'];
  chain: SnapshotRecord[];
  /** meta.snapshot indexes are the chain's own (0..), made global when the chains are put together. */
  layers: LayerPlan[];
}

export async function exportBundle(home: Home, vmName: string, opts: ExportOptions): Promise<ExportResult> {
  return exportChains(home, [{ vm: vmName, name: opts.name, since: opts.since }], null, opts);
}

/**
 * Exports several VMs' chains as one bundle: one block numbering and one dedup index for all of them,
 * so blocks the VMs share (clones of one base) are stored once. `group` non-null makes it a version 2
 * (group) bundle; a single chain without a group is a version 1 bundle, as older readers expect.
 */
/** What a caller does at two points of exportChains (a group export: group.ts). */
export interface ExportHooks {
  /** The resolved chains (VM → snapshot names, oldest first), still under the VM locks: throw to refuse. */
  check?(chains: Map<string, string[]>): void;
  /** Every chain is pinned and the VM locks are released. */
  pinned?(): Promise<void>;
}

export async function exportChains(
  home: Home,
  targets: ChainTarget[],
  group: MetaGroup | null,
  opts: ExportOptions,
  hooks: ExportHooks = {},
): Promise<ExportResult> {
  for (const t of targets) checkName('VM', t.vm);
  const level = opts.level ?? 3;
  if (!Number.isInteger(level) || level < 1 || level > 19) throw usageError(`--level must be a whole number from 1 to 19, got ${level}`);
  const toStream = typeof opts.output !== 'string';
  if (typeof opts.output !== 'string' && (opts.output as Partial<NodeJS.WriteStream>).isTTY) {
    throw usageError('refusing to write a bundle to a terminal', 'redirect stdout to a file or a pipe, or use -o FILE');
  }
  checkAborted(opts.signal);
  const t0 = Date.now();
  for (const t of targets) await loadVm(home, t.vm); // VM_NOT_FOUND before a lock file is made
  // A wrong output path fails now, not after the whole export (output.ts).
  const finalPath = typeof opts.output === 'string' ? await checkExportOutput(home, opts.output, Boolean(opts.force)) : null;
  // The workers start (load, compile, zstd) while the chain is checked, not after it (bench/README.md).
  const starting = WorkerPool.start();
  starting.catch(() => undefined);
  let pool: WorkerPool | null = null;
  // The locks are held only while the chains are resolved and pinned (store/pins.ts): layers never change
  // once made, except by a delete, which a pin holds off; so other commands (a scheduled snapshot
  // create) run during a long export. Several VMs are locked in name order (the order every group
  // operation takes them in), so two of them never wait on each other.
  const locks: Lock[] = [];
  const pins: Pin[] = [];
  const releaseLocks = async () => {
    for (const l of locks.splice(0).reverse()) await l.release();
  };
  try {
    try {
      for (const vm of targets.map((t) => t.vm).sort()) locks.push(await lockVm(home, vm, 'snapshot export'));
    } catch (err) {
      await releaseLocks();
      await (await starting.catch(() => null))?.close();
      throw err;
    }
    const plans: ChainPlan[] = [];
    for (const t of targets) {
      await recover(home, t.vm, driverStepHandlers);
      plans.push(await planChain(home, t));
    }
    hooks.check?.(new Map(plans.map((p) => [p.vm, p.chain.map((s) => s.name)])));
    for (const p of plans) {
      pins.push(
        await pinSnapshots(
          home,
          p.vm,
          p.chain.map((s) => s.name),
          'snapshot export',
        ),
      );
    }
    await releaseLocks();
    await hooks.pinned?.();

    // One list of snapshots and layers, chain after chain.
    const chains: MetaChain[] = [];
    const allSnaps: SnapshotRecord[] = [];
    const layers: LayerPlan[] = [];
    for (const p of plans) {
      const first = allSnaps.length;
      chains.push({ vm: p.vm, since: p.since, first, count: p.chain.length });
      allSnaps.push(...p.chain);
      for (const l of p.layers) layers.push({ ...l, meta: { ...l.meta, snapshot: l.meta.snapshot + first } });
    }
    const meta: Meta = {
      format: 'clonebox-bundle',
      version: group ? 2 : 1,
      created_at: nowIso(),
      block_size: BLOCK_SIZE,
      block_hash: opts.key ? 'blake2b256-keyed-sha256' : 'sha256',
      compression: { codec: 'zstd', level },
      chains,
      group,
      snapshots: allSnaps.map((s) => ({
        name: s.name,
        parent: s.parent,
        type: s.type,
        created_at: s.created_at,
        description: s.description,
        tags: s.tags,
        auto_created: s.auto_created,
        auto_policy: s.auto_policy,
        expires_at: s.expires_at,
        content_id: s.content_id ?? null,
      })),
      layers: layers.map((l) => l.meta),
    };

    const { header, sealer, idk } = await newHeader(opts.key, meta.version);
    let out: Writable;
    let tmp: string | null = null;
    let fh: import('node:fs/promises').FileHandle | null = null;
    if (typeof opts.output !== 'string' || finalPath === null) out = opts.output as Writable;
    else {
      tmp = tempPathFor(finalPath);
      try {
        fh = await open(tmp, 'wx', 0o644);
      } catch (err) {
        tempDone(tmp);
        throw ioError(err, 'cannot create bundle', finalPath);
      }
      // A high-water mark above one pack: writing a pack never holds up building the next one.
      out = createWriteStream('', { fd: fh.fd, autoClose: false, highWaterMark: 2 * PACK_TARGET + 1024 * 1024 });
    }
    const tarW = new TarWriter(out, opts.key ? new Date(0) : new Date(), !toStream);
    const progress = new Progress('export', opts.onProgress ? await totalData(layers) : null, opts.onProgress);
    try {
      await tarW.add(ENTRY_HEADER, header);
      await tarW.add(ENTRY_META, sealer.sealParts(EntryKind.Meta, 0, encodeMeta(meta)));
      pool = await starting;
      // Dirty pages go to the disk while the export goes on (one datasync at a time, every 32 MiB), so
      // the fsync before the rename waits only for the tail, not for the whole bundle (bench/README.md).
      let syncing: Promise<void> | null = null;
      let syncedUpTo = 0;
      const afterPack = (written: Promise<void>) => {
        if (!fh || syncing || tarW.bytes - syncedUpTo < BACKGROUND_SYNC_BYTES) return;
        const upTo = tarW.bytes;
        const file = fh;
        syncing = written
          .then(() => file.datasync())
          .then(
            () => {
              syncedUpTo = upTo;
            },
            () => undefined,
          )
          .finally(() => {
            syncing = null;
          });
      };
      const result = await runPipeline(pool, layers, tarW, sealer, idk, level, progress, afterPack, opts.signal);
      await syncing;
      const ids: string[] = [];
      for (const ch of chains) {
        for (let si = ch.first; si < ch.first + ch.count; si++) {
          const parentId = si === ch.first ? (ch.since ? ch.since.content_id : null) : ids[si - 1]!;
          ids.push(
            allSnaps[si]!.content_id ??
              contentId(
                parentId,
                layers.flatMap((l, li) => (l.meta.snapshot === si ? [{ target: l.meta.target, digest: result.digests[li]! }] : [])),
              ),
          );
        }
      }
      const seal: Seal = {
        packs: result.packs,
        snapshots: allSnaps.map((s, i) => ({ name: s.name, content_id: ids[i]! })),
        layers: result.layerStats,
        totals: result.totals,
      };
      await tarW.add(ENTRY_SEAL, sealer.sealParts(EntryKind.Seal, 0, encodeJson(seal)));
      await tarW.finish();
      if (fh) {
        await fh.sync();
        await fh.close();
        fh = null;
        if (opts.force) await rename(tmp!, finalPath!);
        else {
          // link(2), not rename(2): a file that appeared at the name since the check is kept, not replaced.
          try {
            await link(tmp!, finalPath!);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
              throw CloneboxError.FILE_EXISTS(`file already exists, ${finalPath}`, { hint: 'something created it during the export; choose another name' });
            }
            throw err;
          }
          await unlink(tmp!).catch(() => undefined);
        }
        tempDone(tmp!);
        tmp = null;
        await fsyncDir(path.dirname(finalPath!));
      }
      // The ids computed on the way are kept: later merges must not change what names these states.
      for (const ch of chains) {
        await keepContentIds(
          home,
          ch.vm,
          allSnaps.slice(ch.first, ch.first + ch.count).map((s, i) => ({ rec: s, id: ids[ch.first + i]! })),
        );
      }
      return {
        file: finalPath ?? '-',
        snapshots: allSnaps.map((s) => s.name),
        chains: chains.map((ch) => ({ vm: ch.vm, snapshots: allSnaps.slice(ch.first, ch.first + ch.count).map((s) => s.name) })),
        group: group?.name ?? null,
        logical_bytes: result.totals.logical_bytes,
        unique_bytes: result.totals.unique_bytes,
        stored_bytes: result.totals.stored_bytes,
        blocks: result.totals.blocks,
        unique_blocks: result.totals.unique_blocks,
        encrypted: opts.key !== null,
        seconds: (Date.now() - t0) / 1000,
        bundle_bytes: tarW.bytes,
        since: chains[0]!.since?.name ?? null,
      };
    } catch (err) {
      tarW.abort(err as Error);
      throw writeError(err, finalPath);
    } finally {
      await pool?.close();
      if (fh) await fh.close().catch(() => undefined);
      if (tmp) {
        await unlink(tmp).catch(() => undefined);
        tempDone(tmp);
      }
    }
  } finally {
    await releaseLocks();
    for (const p of pins) await p.release();
    if (!pool) await (await starting.catch(() => null))?.close(); // failed before the pipeline started
  }
}

/** Resolves and checks one VM's chain; the caller holds the VM's lock and has recovered its journal. */
async function planChain(home: Home, t: ChainTarget): Promise<ChainPlan> {
  const vmName = t.vm;
  const vm = await loadVm(home, vmName);
  const snaps = await listSnapshotRecords(home, vmName);
  const byName = new Map(snaps.map((s) => [s.name, s]));
  const last = t.name ?? vm.current;
  if (last === null) {
    throw new CloneboxError('NO_SNAPSHOTS', `VM ${vmName} has no snapshot to export`, { hint: `create one with \`clonebox snapshot create ${vmName}\`` });
  }
  if (t.name !== undefined) checkName('snapshot', t.name);
  if (!byName.has(last)) throw notFound(vmName, last);
  // The line from the root to `last`.
  const line: SnapshotRecord[] = [];
  for (let cur: string | null = last; cur !== null; cur = byName.get(cur)?.parent ?? null) {
    const rec = byName.get(cur);
    if (!rec) throw new CloneboxError('STORE_CORRUPT', `snapshot ${line[line.length - 1]?.name} names a missing parent ${cur}, VM ${vmName}`);
    if (line.length > snaps.length) throw new CloneboxError('STORE_CORRUPT', `snapshot parents form a loop, VM ${vmName}`);
    line.push(rec);
  }
  line.reverse();
  let since: MetaChain['since'] = null;
  let chain = line;
  if (t.since !== undefined) {
    checkName('snapshot', t.since);
    if (!byName.has(t.since)) throw notFound(vmName, t.since);
    const at = line.findIndex((s) => s.name === t.since);
    if (at < 0 || at === line.length - 1) {
      throw usageError(`--since ${t.since} is not an ancestor of ${last}`, `see \`clonebox snapshot list ${vmName} --tree\``);
    }
    const ids = await ensureContentIds(home, snaps, [t.since]);
    since = { name: t.since, content_id: ids.get(t.since)! };
    chain = line.slice(at + 1);
  }
  for (const s of chain) {
    if (s.state !== 'ready') throw new CloneboxError('SNAPSHOT_NOT_READY', `snapshot ${s.name} is ${s.state}, not ready, VM ${vmName}`);
  }

  // Layers, with the checks that make the bundle rebuildable: each layer stands on its parent's.
  const layers: LayerPlan[] = [];
  let targets: string | null = null;
  for (const [si, s] of chain.entries()) {
    const disks = [...s.disks].sort((a, b) => (a.target < b.target ? -1 : 1));
    const tg = disks.map((d) => d.target).join(',');
    if (targets === null) targets = tg;
    else if (targets !== tg)
      throw new CloneboxError('UNSUPPORTED', `snapshot ${s.name} has other disks (${tg}) than ${chain[0]!.name} (${targets}), VM ${vmName}`);
    for (const d of disks) {
      const img = await Qcow2Image.open(d.path);
      try {
        const backing = img.backingPath();
        let resolved = false;
        if (s.parent === null) {
          resolved = backing !== null;
          // A root on a base image carries that base's bytes: its chain must still pass the rules
          // `vm add` applied (the header may have changed since). A libvirt domain's chain is the domain's.
          if (resolved && vm.driver === 'image') await checkedBackingChain(d.path, vm.allowed_backing ?? []);
        } else {
          const want = byName.get(s.parent)!.disks.find((x) => x.target === d.target)?.path ?? null;
          if (want === null || backing === null || path.resolve(backing) !== path.resolve(want)) {
            throw new CloneboxError('STORE_CORRUPT', `layer ${d.path} stands on ${backing ?? 'nothing'}, not on its parent's layer ${want}`);
          }
        }
        layers.push({ meta: { snapshot: si, target: d.target, virtual_size: img.virtualSize, cluster_size: img.clusterSize }, path: d.path, resolved });
      } finally {
        await img.close();
      }
    }
  }
  return { vm: vmName, since, chain, layers };
}

/**
 * Records the content ids an export computed, for snapshots that had none, under the VM lock again
 * (the pin keeps the snapshots from being merged meanwhile). A VM busy past the lock wait is left as it
 * is: the ids are computed again by the next export or share, from the same unchanged layers.
 */
async function keepContentIds(home: Home, vm: string, computed: { rec: SnapshotRecord; id: string }[]): Promise<void> {
  const missing = computed.filter((c) => !c.rec.content_id);
  if (missing.length === 0) return;
  let lock: Lock;
  try {
    lock = await lockVm(home, vm, 'snapshot export');
  } catch (err) {
    if (err instanceof CloneboxError && err.code === 'VM_BUSY') return;
    throw err;
  }
  try {
    for (const { rec, id } of missing) {
      const cur = readSnapshotRecord(home, vm, rec.name);
      if (!cur || cur.content_id || JSON.stringify(cur.disks) !== JSON.stringify(rec.disks)) continue;
      rec.content_id = id;
      await saveSnapshotRecord(home, { ...cur, content_id: id });
    }
  } finally {
    await lock.release();
  }
}

/**
 * A file system error while writing (no space left, a disk error, a closed pipe) is `IO` naming the
 * output, not INTERNAL (issue 17); errors of ours and anything else pass through unchanged.
 */
function writeError(err: unknown, file: string | null): unknown {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (err instanceof CloneboxError || typeof code !== 'string' || !/^E[A-Z0-9]+$/.test(code)) return err;
  return ioError(err, 'cannot write bundle', file ?? '(standard output)');
}

async function totalData(layers: LayerPlan[]): Promise<number> {
  let n = 0;
  for (const l of layers) {
    const src = await openLayer(l.path, l.resolved);
    try {
      for await (const p of src.pieces()) if (p.kind === 'data') n += p.length;
    } finally {
      await src.close();
    }
  }
  return n;
}

interface InFlight {
  batch: { layer: number; items: Batch['items'] };
  /** SHA-256 of each block item, in item order. */
  shas: Buffer;
  /** Block number of each block item, in item order. */
  numbers: Uint32Array;
  /** Lengths and ids of the batch's new blocks (the frame), in order. */
  fresh: { length: number; id: Buffer }[];
  frame: Promise<{ codec: Codec; stored: Buffer; rawLength: number; release: () => void }> | null;
}

interface PipelineResult {
  packs: number;
  digests: Buffer[];
  layerStats: Seal['layers'];
  totals: SealTotals;
}

/** ArrayBuffers that cycle between this thread and the workers (no page faults, no garbage). */
class BufferPool {
  private readonly free: ArrayBuffer[] = [];
  constructor(
    private readonly size: number,
    private readonly keep: number,
  ) {}
  take(): ArrayBuffer {
    return this.free.pop() ?? new ArrayBuffer(this.size);
  }
  give(b: ArrayBuffer): void {
    if (b.byteLength === this.size && this.free.length < this.keep) this.free.push(b);
  }
}

async function runPipeline(
  pool: WorkerPool,
  layers: LayerPlan[],
  tarW: TarWriter,
  sealer: Sealer,
  idk: Buffer | null,
  level: number,
  progress: Progress,
  afterPack: (written: Promise<void>) => void,
  signal: AbortSignal | undefined,
): Promise<PipelineResult> {
  const index = new BlockIndex();
  let packNo = 0;
  const totals: SealTotals = { logical_bytes: 0, unique_bytes: 0, stored_bytes: 0, blocks: 0, unique_blocks: 0, frames: 0 };
  const digests = layers.map((l) => new LayerDigest(l.meta.virtual_size, l.meta.cluster_size));
  // Frames being compressed: enough to keep every worker busy while this thread reads and hashes.
  const maxInFlight = pool.size * 2;
  const packTarget = envSize('CLONEBOX_BUNDLE_PACK_BYTES', PACK_TARGET);
  const frameTarget = envSize('CLONEBOX_BUNDLE_FRAME_BYTES', FRAME_TARGET);
  const packCapacity = packTarget + 2 * (frameTarget + BLOCK_SIZE);
  const packW = new PackWriter(packCapacity);
  // Pools as deep as the frames in flight (plus the batcher's and the one being emitted): a fresh
  // buffer costs a page fault per 4 KiB when first touched, and shallow pools kept faulting (bench/README.md).
  const inputs = new BufferPool(frameTarget + BLOCK_SIZE, maxInFlight + 3);
  const outputs = new BufferPool(compressBound(frameTarget + BLOCK_SIZE), maxInFlight + 2);
  const queue: InFlight[] = [];

  // An encrypted pack is sealed into memory that comes back once the file has its bytes: a fresh
  // buffer per pack cost a page fault per 4 KiB and an munmap (bench/README.md).
  const sealedSpares: Buffer[] = [];
  const sealedSize = packCapacity + sealer.overhead;
  const writePack = async () => {
    const payload = packW.take();
    const used: Buffer[] = [];
    const alloc = (n: number): Buffer => {
      const b = (n <= sealedSize ? sealedSpares.pop() : undefined) ?? Buffer.allocUnsafe(Math.max(n, sealedSize));
      used.push(b);
      return b.subarray(0, n);
    };
    const { written } = await tarW.add(packEntryName(packNo), sealer.sealParts(EntryKind.Pack, packNo, payload, alloc));
    packW.release(payload, written);
    if (used.length) {
      written.then(
        () => {
          for (const b of used) if (b.length === sealedSize && sealedSpares.length < 3) sealedSpares.push(b);
        },
        () => undefined,
      );
    }
    afterPack(written);
    packNo++;
    await packW.ready();
  };

  // In batch order: the frame (if any), then the batch's records; a full pack goes out as one entry.
  const emit = async (f: InFlight) => {
    const b = f.batch;
    if (f.frame) {
      const frame = await f.frame;
      packW.frame(frame.codec, f.fresh, frame.stored);
      frame.release();
      totals.frames++;
      totals.stored_bytes += frame.stored.length;
      totals.unique_bytes += frame.rawLength;
      totals.unique_blocks += f.fresh.length;
    }
    const dg = digests[b.layer]!;
    let k = 0;
    let bytes = 0;
    for (const it of b.items) {
      if (it.kind === 'zero') {
        packW.zero(b.layer, it.offset, it.length);
        dg.addZero(it.offset, it.length);
        continue;
      }
      packW.data(b.layer, it.offset, f.numbers[k]!, it.length);
      dg.addBlock(it.offset, it.length, f.shas.subarray(k * 32, k * 32 + 32));
      totals.blocks++;
      totals.logical_bytes += it.length;
      bytes += it.length;
      k++;
    }
    if (packW.size >= packTarget) await writePack();
    progress.add(bytes);
    checkAborted(signal);
  };

  // Runs on this thread while the batch buffer is still ours: hash, dedup, copy the new blocks out.
  const submit = async (batch: Batch) => {
    const shas = Buffer.allocUnsafe(batch.blocks * 32);
    const numbers = new Uint32Array(batch.blocks);
    const fresh: { length: number; id: Buffer }[] = [];
    const freshItems: { at: number; length: number }[] = [];
    let k = 0;
    for (const it of batch.items) {
      if (it.kind !== 'block') continue;
      const sha = shas.subarray(k * 32, k * 32 + 32);
      createHash('sha256')
        .update(batch.buf.subarray(it.at, it.at + it.length))
        .digest()
        .copy(sha);
      const bid = blockId(sha, idk);
      let n = index.get(bid);
      if (n < 0) {
        n = index.add(bid);
        fresh.push({ length: it.length, id: index.idOf(n) });
        freshItems.push(it);
      }
      numbers[k++] = n;
    }
    const f: InFlight = { batch: { layer: batch.layer, items: batch.items }, shas, numbers, fresh, frame: null };
    let input: Buffer | null = null;
    let rawLength = 0;
    let kept = false;
    if (fresh.length === batch.blocks && fresh.length > 0) {
      // Every block is new: the batch buffer itself goes to the worker (no copy); the batcher takes another.
      input = batch.buf;
      rawLength = batch.used;
      kept = true;
    } else if (fresh.length) {
      input = Buffer.from(inputs.take());
      for (const it of freshItems) {
        batch.buf.copy(input, rawLength, it.at, it.at + it.length);
        rawLength += it.length;
      }
    }
    if (input) {
      const output = outputs.take();
      const inAb = input.buffer as ArrayBuffer;
      const raw = rawLength;
      f.frame = pool.request(pool.pick(), { op: 'compress', id: pool.newId(), input: inAb, length: raw, output, level }, [inAb, output]).then((rep) => {
        const r = rep as Extract<WorkerReply, { storedLength: number }>;
        // The stored bytes stay in their buffer until the batch is emitted (copied into the pack then).
        if (r.codec === Codec.Zstd) {
          inputs.give(r.input);
          return { codec: r.codec, stored: Buffer.from(r.output, 0, r.storedLength), rawLength: raw, release: () => outputs.give(r.output) };
        }
        outputs.give(r.output);
        return { codec: r.codec, stored: Buffer.from(r.input, 0, raw), rawLength: raw, release: () => inputs.give(r.input) };
      });
      f.frame.catch(() => undefined); // a failure surfaces when the batch is emitted
    }
    queue.push(f);
    while (queue.length > maxInFlight) await emit(queue.shift()!);
    return kept ? ('kept' as const) : undefined;
  };

  for (const [li, l] of layers.entries()) {
    const src = await openLayer(l.path, l.resolved);
    try {
      const batcher = new Batcher(li, frameTarget, submit, () => Buffer.from(inputs.take()));
      for await (const p of src.pieces()) {
        if (p.kind === 'zero') await batcher.zero(p.offset, p.length);
        else await batcher.data(p.offset, p.length, p.fill);
      }
      await batcher.flush();
    } finally {
      await src.close();
    }
  }
  while (queue.length) await emit(queue.shift()!);
  if (!packW.empty) await writePack();
  const layerStats = digests.map((d) => {
    const digest = d.digest();
    return { digest: digest.toString('hex'), data_bytes: d.dataBytes, zero_bytes: d.zeroBytes, blocks: d.blocks, raw: digest };
  });
  return {
    packs: packNo,
    digests: layerStats.map((s) => s.raw),
    layerStats: layerStats.map(({ raw: _raw, ...rest }) => rest),
    totals,
  };
}
