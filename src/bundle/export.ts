/**
 * `snapshot export`: a snapshot chain (root..N, or the layers after BASE) into one bundle.
 *
 * Pipeline, per layer in bundle order (content/frames.ts, shared with the archive's push):
 *   main thread   reads the layer's map and data (content/layer.ts), cuts blocks into ~2 MiB batches,
 *                 hashes every block (SHA-256) and looks its id up in the dedup index: known → a
 *                 reference, new → gets the next block number
 *   worker        compresses the batch's new blocks into one zstd frame (the bytes never came back)
 *   main thread   appends the frame and the batch's records to the current pack, in batch order;
 *                 a full pack is sealed and written as one tar entry
 * Batches in flight are bounded (two per worker), so memory does not grow with the disk.
 */

import { createWriteStream } from 'node:fs';
import { link, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { checkAborted } from '../abort.js';
import { nowIso } from '../clock.js';
import { BlockIndex } from '../content/dedup.js';
import { LayerDigest } from '../content/digest.js';
import { FramePipeline } from '../content/frames.js';
import { openLayer } from '../content/layer.js';
import { WorkerPool } from '../content/workers.js';
import { driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError, ioError, usageError } from '../errors.js';
import { fsyncDir, tempDone, tempPathFor } from '../fsutil.js';
import { checkName, NAME_RE } from '../names.js';
import { checkedLayers, keepContentIds, layersDataBytes, lineTo, snapshotNotFound } from '../snapshots/chain-read.js';
import { contentId, ensureContentIds } from '../snapshots/identity.js';
import type { Home } from '../store/home.js';
import { recover } from '../store/journal.js';
import type { Lock } from '../store/lock.js';
import { type Pin, pinSnapshots } from '../store/pins.js';
import { loadVm, lockVm } from '../store/registry.js';
import { listSnapshotRecords, readSnapshotRecord, type SnapshotRecord, snapshotMeta } from '../store/snapshots.js';
import { blockId, deriveMaster, encKey, idKey, type KeySource, keyCheck, randomBytes, Sealer } from './crypto.js';
import {
  BLOCK_SIZE,
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
      snapshots: allSnaps.map((s) => ({ ...snapshotMeta(s), content_id: s.content_id ?? null })),
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
    const progress = new Progress('export', opts.onProgress ? await layersDataBytes(layers) : null, opts.onProgress);
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
      // Every frame is compressed: the workers end while the seal is written and the bundle made durable.
      pool.close().catch(() => undefined); // a failure surfaces where the pool is closed for good
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
          'snapshot export',
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
  const last = t.name ?? vm.current;
  // `--since` of a recent snapshot reads only the records back to it, not the whole history (issue 16).
  const short = last !== null && t.since !== undefined ? shortLine(home, vmName, last, t.since) : null;
  const snaps = short ?? (await listSnapshotRecords(home, vmName));
  const byName = new Map(snaps.map((s) => [s.name, s]));
  if (last === null) {
    throw new CloneboxError('NO_SNAPSHOTS', `VM ${vmName} has no snapshot to export`, { hint: `create one with \`clonebox snapshot create ${vmName}\`` });
  }
  if (t.name !== undefined) checkName('snapshot', t.name);
  if (!byName.has(last)) throw snapshotNotFound(vmName, last);
  const line = short ? [...short].reverse() : lineTo(vmName, byName, last);
  let since: MetaChain['since'] = null;
  let chain = line;
  if (t.since !== undefined) {
    checkName('snapshot', t.since);
    if (!byName.has(t.since)) throw snapshotNotFound(vmName, t.since);
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
    for (const l of await checkedLayers(vm, s, byName)) {
      layers.push({ meta: { snapshot: si, target: l.target, virtual_size: l.virtualSize, cluster_size: l.clusterSize }, path: l.path, resolved: l.resolved });
    }
  }
  return { vm: vmName, since, chain, layers };
}

/**
 * The records from `last` back to `since` (both included), read one by one along the parents, when
 * `since` is on that line and already has its content id; null otherwise (a name that is not valid,
 * missing or not an ancestor, or an id still to compute): the caller then reads every record and
 * reports, or computes, as before.
 */
function shortLine(home: Home, vm: string, last: string, since: string): SnapshotRecord[] | null {
  if (!NAME_RE.test(last) || !NAME_RE.test(since)) return null;
  const out: SnapshotRecord[] = [];
  const seen = new Set<string>();
  for (let cur: string | null = last; cur !== null && !seen.has(cur) && NAME_RE.test(cur); ) {
    const rec = readSnapshotRecord(home, vm, cur);
    if (rec === null || rec.name !== cur) return null;
    out.push(rec);
    seen.add(cur);
    if (cur === since) return rec.content_id ? out : null;
    cur = rec.parent;
  }
  return null;
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

interface PipelineResult {
  packs: number;
  digests: Buffer[];
  layerStats: Seal['layers'];
  totals: SealTotals;
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
  const packTarget = envSize('CLONEBOX_BUNDLE_PACK_BYTES', PACK_TARGET);
  const frameTarget = envSize('CLONEBOX_BUNDLE_FRAME_BYTES', FRAME_TARGET);
  const packCapacity = packTarget + 2 * (frameTarget + BLOCK_SIZE);
  const packW = new PackWriter(packCapacity);

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

  // Per batch: the block number of each block item. In batch order: the frame (if any), then the
  // batch's records; a full pack goes out as one entry.
  const pipeline = new FramePipeline<Uint32Array>(
    pool,
    {
      begin: (blocks) => new Uint32Array(blocks),
      block: (numbers, k, sha) => {
        const bid = blockId(sha, idk);
        let n = index.get(bid);
        const fresh = n < 0;
        if (fresh) n = index.add(bid);
        numbers[k] = n;
        return fresh ? index.idOf(n) : null;
      },
      emit: async (b) => {
        if (b.frame) {
          packW.frame(b.frame.codec, b.fresh, b.frame.stored);
          totals.frames++;
          totals.stored_bytes += b.frame.stored.length;
          totals.unique_bytes += b.frame.rawLength;
          totals.unique_blocks += b.fresh.length;
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
          packW.data(b.layer, it.offset, b.state[k]!, it.length);
          dg.addBlock(it.offset, it.length, b.shas.subarray(k * 32, k * 32 + 32));
          totals.blocks++;
          totals.logical_bytes += it.length;
          bytes += it.length;
          k++;
        }
        if (packW.size >= packTarget) await writePack();
        progress.add(bytes);
        checkAborted(signal);
      },
    },
    frameTarget,
    level,
  );

  try {
    for (const [li, l] of layers.entries()) {
      const src = await openLayer(l.path, l.resolved);
      try {
        await pipeline.layer(li, src);
      } finally {
        await src.close();
      }
    }
    await pipeline.drain();
  } catch (err) {
    await pipeline.abort();
    throw err;
  }
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
