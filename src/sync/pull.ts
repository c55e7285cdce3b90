/**
 * Pulling one teammate's shared chain into this home.
 *
 *  1. Verify: every snapshot record's layer digests with the parent's content id give its content id;
 *     the parent must come earlier in the catalog; the maps of every snapshot not held here yet give
 *     its layer digests (recomputed here).
 *  2. Place: VM `<vm>` when it does not exist, or when every snapshot it holds was pulled from this
 *     same catalog (provenance: the same author) and is in this chain (by content id); else
 *     `<vm>.<peer name>` under the same rule. A VM made here, imported, or pulled from another member
 *     is never touched, and nothing lands on a file that exists (a new VM's disk included).
 *  3. Count: what the new layers would write (their maps, before a block is asked for) against the
 *     free space and the caller's limits (WriteBudget, as `snapshot import` does): a root layer's
 *     zero ranges are not written at all (unallocated clusters read as zero), so one Zero item over a
 *     huge disk costs nothing there, and anywhere else it is counted, one L2 entry per cluster.
 *  4. Gather: each block the new layers need comes from a local layer (of VMs shared with or pulled
 *     from this team only: the LocalBlocks index), from the spool (an earlier, interrupted pull), or
 *     from the peer; fetched blocks are verified by BlockChannel and handed to the layer writer in
 *     memory (arrivals.ts).
 *  5. Build and register, as `snapshot import` does: each layer is written by the qcow2 writer under a
 *     hidden temporary name (listed in PullTemps, without the VM lock, while the blocks arrive), every
 *     layer digest checked against the catalog; then, under the VM lock and the journal, the VM is
 *     checked again, the files renamed and the records (VM last) written in one journal commit. A
 *     failure before that leaves nothing behind but the blocks it fetched, in the spool.
 *
 * Each fetched block is written once, into the layer that needs it; placed.ts indexes where (durably,
 * in batches) and reads it back when a later layer needs it again. Only a block the layers cannot hold
 * as it is (let through while memory was full, or gathered into a cluster larger than a block) goes to
 * the spool. A pull that fails copies its placed blocks into the spool before its layers are removed.
 */

import { rm, rmdir, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { checkAborted } from '../abort.js';
import { nowIso } from '../clock.js';
import { BLOCK_SIZE } from '../content/digest.js';
import { crashPoint } from '../crash.js';
import { layerPathFor, newDiskPath } from '../drivers/image.js';
import { driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError } from '../errors.js';
import { ensureDir, freeSpace, pathExists, syncFiles } from '../fsutil.js';
import { NAME_RE } from '../names.js';
import { checkVirtualSize, WriteBudget } from '../qcow2/budget.js';
import { Qcow2Writer } from '../qcow2/writer.js';
import { contentId, ensureContentIds, trustedContentId } from '../snapshots/identity.js';
import {
  commitLanding,
  currentIsClean,
  type Landing,
  LayerAssembler,
  landingTemp,
  landOverlays,
  type OverlayPlan,
  refuseExisting,
} from '../snapshots/landing.js';
import type { Home } from '../store/home.js';
import { Journal, recover } from '../store/journal.js';
import { loadVm, lockVm, type VmRecord, vmExists } from '../store/registry.js';
import { listSnapshotRecords, originOf, type SnapshotOrigin, type SnapshotRecord } from '../store/snapshots.js';
import { Arrivals } from './arrivals.js';
import type { Catalog, CatalogSnapshot, CatalogView } from './catalog.js';
import type { MapItem } from './catalog-records.js';
import { digestOfItems, type LayerMap, type LocalBlocks, rememberLayerMap } from './layermap.js';
import { Placements } from './placed.js';
import type { Spool } from './spool.js';
import type { PullTemps } from './temps.js';
import { trace } from './trace.js';

export interface ChainReport {
  vm: string;
  /** Snapshots added by this pull (names as registered). */
  snapshots: string[];
  blocks_fetched: number;
  blocks_reused: number;
  bytes_received: number;
  /** Extra: where it came from, and the remote VM name. */
  peer: string;
  remote_vm: string;
  /** Extra: the teammate that relayed the chain while its author (`peer`) was away. */
  via?: string;
  /** Extra: snapshots left out because their sharer no longer serves some of their blocks. */
  unavailable?: string[];
}

/**
 * Fetches blocks from teammates; resolves with what it could not get. `onArrive` is called with each
 * verified block (the data stays valid: not reused) and keeps it (pull.ts places it in a layer or the
 * spool); the fetch waits for the promise it returns (the layer writer's backpressure).
 */
export type Fetcher = (
  hashes: Buffer[],
  sizeOf: (h: Buffer) => number,
  onArrive?: (hash: Buffer, data: Buffer) => Promise<void> | void,
) => Promise<{
  fetched: number;
  wireBytes: number;
  failed: Buffer[];
  corrupt: number;
  /** The sharer answered plainly that it does not have the failed blocks (it deleted a snapshot?). */
  notServed: boolean;
}>;

/**
 * A block's verified bytes for the layer writer (waits while it is on its way), or null. `fresh`: it
 * came from the fetch and is held nowhere else yet (the writer places it, or spools it).
 */
type BlockGetter = (sha: Buffer) => Promise<{ data: Buffer; fresh: boolean } | null>;

/** Where the layer writer keeps the fetched blocks it writes (see the module comment). */
interface BlockKeep {
  placements: Placements;
  spool: Spool;
}

/** Bytes of arrived blocks held in memory for the layer writer. */
const ARRIVED_MAX = 64 * 1024 * 1024;

export interface PullContext {
  home: Home;
  /** The team the catalog belongs to (recorded in the pulled snapshots' origin). */
  team: string;
  /** The chain's author: its recorded name. */
  peerName: string;
  /** The author's identity key (hex), when recorded. */
  peerKey: string | null;
  catalog: Catalog;
  view: CatalogView;
  local: LocalBlocks;
  spool: Spool;
  fetch: Fetcher;
  /** Where temporaries written before the VM lock is taken are listed (temps.ts). */
  temps: PullTemps;
  log: (line: string) => void;
  progress?: (vm: string, done: number, total: number) => void;
  /** An abort stops the pull before it commits: the written layers are removed, nothing is registered. */
  signal?: AbortSignal | undefined;
  /** Refuse (BUDGET_EXCEEDED) a chain whose new layers would write more than this; null: free space only. */
  maxWrite: number | null;
  /** Refuse (BUDGET_EXCEEDED) a chain with a disk larger than this (DEFAULT_MAX_VIRTUAL_SIZE). */
  maxVirtualSize: number;
}

interface VerifiedSnapshot extends CatalogSnapshot {
  maps: LayerMap[]; // per disk, in record order
  /** This snapshot in the chain (snapKey), and its parent's (null: a root). */
  key: string;
  parentKey: string | null;
}

/**
 * A snapshot's identity in a pulled chain. Its content id names its state, not the snapshot: two
 * snapshots with identical content on the same parent (an empty snapshot taken right after another on
 * the same parent, two empty branch points) share a content id and are still two snapshots, with their
 * own names, children and places in the tree. Within one VM's chain the name tells them apart (a pulled
 * snapshot keeps its author's name), so the pair is the key; blocks are still shared by hash.
 */
function snapKey(contentId: string, name: string): string {
  return `${contentId}/${name}`;
}

function chainError(message: string, hint?: string): CloneboxError {
  return new CloneboxError('SYNC_CHAIN', message, hint ? { hint } : {});
}

/** A chain that failed because no teammate online could give some of its blocks. */
export class BlocksUnavailable extends CloneboxError {
  constructor(
    message: string,
    hint: string,
    readonly failed: Buffer[],
    readonly corrupt: number,
    readonly notServed: boolean,
  ) {
    super('SYNC_CHAIN', message, { hint });
  }
}

/**
 * The snapshots of `vm` the catalog shares, parents first, their content ids verified against their
 * layer digests and parents (step 1). Their maps are checked against those digests by verifyMaps,
 * only for the snapshots this pull does not hold yet: a snapshot held here was pulled from this same
 * catalog (place() checks the provenance) with its map verified then, and an incremental pull must
 * not read and hash the map of every snapshot in the history again.
 */
function verifiedChain(view: CatalogView, vm: string, peer: string): { all: VerifiedSnapshot[]; list: VerifiedSnapshot[] } {
  const share = view.shares.get(vm);
  if (!share) return { all: [], list: [] };
  const records = view.snapshots.get(vm) ?? [];
  const byKey = new Map<string, VerifiedSnapshot>();
  /** content id -> key of the latest snapshot with it (for a parent named by content id alone). */
  const latestById = new Map<string, string>();
  for (const s of records) {
    const key = snapKey(s.id, s.name);
    if (byKey.has(key)) continue;
    const parentHex = s.parent ? s.parent.toString('hex') : null;
    const parentKey = parentHex === null ? null : s.parent_name !== null ? snapKey(parentHex, s.parent_name) : (latestById.get(parentHex) ?? null);
    if (parentHex !== null && (parentKey === null || !byKey.has(parentKey))) {
      throw chainError(`catalog of ${peer}: snapshot ${vm}/${s.name} names a parent that comes nowhere before it`);
    }
    const id = contentId(
      parentHex,
      s.disks.map((d) => ({ target: d.target, digest: d.digest })),
    );
    if (id !== s.id) throw chainError(`catalog of ${peer}: snapshot ${vm}/${s.name} does not have the content id its layers give`);
    if (new Set(s.disks.map((d) => d.target)).size !== s.disks.length) throw chainError(`catalog of ${peer}: snapshot ${vm}/${s.name} lists a disk twice`);
    byKey.set(key, { ...s, maps: [], key, parentKey });
    latestById.set(id, key);
  }
  const all = [...byKey.values()];
  let list = all;
  if (share.upto !== null) {
    // root..upto only (the newest record of that name).
    const top = [...list].reverse().find((s) => s.name === share.upto);
    const keep = new Set<string>();
    for (let cur = top ?? null; cur; cur = cur.parentKey ? (byKey.get(cur.parentKey) ?? null) : null) keep.add(cur.key);
    list = list.filter((s) => keep.has(s.key));
  }
  return { all, list };
}

/** Reads the maps of `s` from the catalog and checks that they give its layer digests (step 1). */
async function verifyMaps(cat: Catalog, vm: string, peer: string, s: VerifiedSnapshot): Promise<void> {
  const maps: LayerMap[] = [];
  for (const d of s.disks) {
    const items = await cat.mapItems(d.map_start, d.map_count, vm, d.target);
    let end = 0;
    for (const it of items) {
      if (it.offset < end || it.offset + it.length > d.virtual_size + d.cluster_size) {
        throw chainError(`catalog of ${peer}: the map of ${vm}/${s.name} (${d.target}) is out of order or out of range`);
      }
      end = it.offset + it.length;
    }
    const dg = digestOfItems(d.virtual_size, d.cluster_size, items);
    if (!dg.digest().equals(d.digest) || dg.blocks !== d.blocks || dg.dataBytes !== d.data_bytes) {
      throw chainError(`catalog of ${peer}: the map of ${vm}/${s.name} (${d.target}) does not give its layer digest`);
    }
    maps.push({
      virtualSize: d.virtual_size,
      clusterSize: d.cluster_size,
      items,
      digest: d.digest,
      dataBytes: d.data_bytes,
      zeroBytes: d.zero_bytes,
      blocks: d.blocks,
    });
  }
  s.maps = maps;
}

interface Placement {
  name: string;
  exists: boolean;
  /** snapKey -> local snapshot record (existing VM). */
  localByKey: Map<string, SnapshotRecord>;
}

/** Why a local VM is not the one this chain extends (null: it is). */
function notSameChain(rec: VmRecord, snaps: SnapshotRecord[], keys: Set<string>, catalogKey: string): string | null {
  if (rec.driver !== 'image') return `it is a ${rec.driver} VM`;
  if (!snaps.length) return 'it has no snapshots';
  for (const s of snaps) {
    const o = originOf(s);
    if (o.kind === 'local') return `snapshot ${s.name} was made here`;
    if (o.kind === 'bundle') return `snapshot ${s.name} was imported from ${o.bundle}`;
    if (o.catalog_key !== catalogKey) return `snapshot ${s.name} was pulled from ${o.member}, another author`;
    // An id that could not be re-derived from layers (content_id_unverified) is never a chain base.
    const id = trustedContentId(s);
    if (id === null || !keys.has(snapKey(id, s.name))) return `snapshot ${s.name} is not in this chain`;
  }
  return null;
}

/**
 * Step 2: where the chain goes. Null: both `<vm>` and `<vm>.<peer>` hold other chains. A VM is
 * extended only when every snapshot in it was pulled from this very catalog (the same author): a
 * teammate whose chain shares our snapshots' content ids cannot make our own VM boot its disk.
 */
async function place(home: Home, vm: string, peer: string, catalogKey: string, keys: Set<string>, log: (l: string) => void): Promise<Placement | null> {
  const candidates = [vm, `${vm}.${peer}`].filter((n) => NAME_RE.test(n));
  for (const name of candidates) {
    if (!(await vmExists(home, name))) return { name, exists: false, localByKey: new Map() };
    const rec = await loadVm(home, name);
    const lock = await lockVm(home, name, 'snapshot sync');
    let snaps: SnapshotRecord[];
    try {
      await recover(home, name, driverStepHandlers);
      snaps = await listSnapshotRecords(home, name);
      if (snaps.some((s) => !s.content_id) && snaps.length) await ensureContentIds(home, snaps);
    } finally {
      await lock.release();
    }
    const why = notSameChain(rec, snaps, keys, catalogKey);
    if (why === null) return { name, exists: true, localByKey: new Map(snaps.map((s) => [snapKey(s.content_id!, s.name), s])) };
    log(`VM ${name} here is not ${peer}'s ${vm} (${why}): left untouched`);
  }
  return null;
}

/**
 * Pulls one chain (see the module comment). Returns null when there was nothing new. `unservable`:
 * blocks the sharer said it no longer has; the snapshots that need one, and their descendants, are
 * left out (named in the report's `unavailable`) and the rest is pulled.
 */
export async function pullChain(ctx: PullContext, vm: string, unservable?: Set<string>): Promise<ChainReport | null> {
  const { home, peerName: peer, log } = ctx;
  trace(`pull ${vm}: verifying`);
  const { all, list: full } = verifiedChain(ctx.view, vm, peer);
  if (!full.length) return null;
  const placed = await place(home, vm, peer, ctx.catalog.key.toString('hex'), new Set(full.map((s) => s.key)), log);
  if (!placed) {
    throw chainError(`cannot pull ${peer}'s ${vm}: VMs ${vm} and ${vm}.${peer} here both hold other chains`, `rename or remove one of them, then sync again`);
  }
  let mapped = 0;
  for (const s of all) {
    if (placed.localByKey.has(s.key)) continue;
    await verifyMaps(ctx.catalog, vm, peer, s);
    mapped++;
  }
  trace(`pull ${vm}: verified ${all.length} snapshots, the maps of ${mapped}`);
  const left = new Set<string>();
  if (unservable?.size) {
    for (const s of full) {
      if (placed.localByKey.has(s.key)) continue;
      const parentLeft = s.parentKey !== null && left.has(s.parentKey);
      if (parentLeft || s.maps.some((m) => m.items.some((it) => it.kind === 'block' && unservable.has(it.sha.toString('hex'))))) left.add(s.key);
    }
  }
  const chain = full.filter((s) => !left.has(s.key));
  const missing = chain.filter((s) => !placed.localByKey.has(s.key));
  const report: ChainReport = { vm: placed.name, snapshots: [], blocks_fetched: 0, blocks_reused: 0, bytes_received: 0, peer, remote_vm: vm };
  if (left.size) report.unavailable = full.filter((s) => left.has(s.key)).map((s) => s.name);
  if (!missing.length) return report;

  // Step 3: count, before anything is asked for or written.
  await chargeChain(ctx, vm, placed, missing);

  // Step 4: gather.
  const need = new Map<string, { sha: Buffer; length: number }>();
  for (const s of missing)
    for (const m of s.maps) for (const it of m.items) if (it.kind === 'block') need.set(it.sha.toString('hex'), { sha: it.sha, length: it.length });
  const toFetch: Buffer[] = [];
  let reused = 0;
  for (const { sha } of need.values()) {
    if (ctx.local.has(sha) || ctx.spool.has(sha)) reused++;
    else toFetch.push(sha);
  }
  report.blocks_reused = reused;

  // Steps 4 and 5 overlap (arrivals.ts): each arrived block handed to the writer in memory, the
  // fetch waiting for the writer once ARRIVED_MAX bytes wait; a block needed twice comes back from
  // the layer it was placed in (placed.ts), or the spool.
  const placements = await Placements.begin(home);
  const arrivals = new Arrivals(toFetch, ARRIVED_MAX, (h, data) => ctx.spool.append(h, data));
  // A block in memory was verified on arrival (BlockChannel); placed blocks, the spool and local
  // layers hash again.
  const blockOf: BlockGetter = async (sha) => {
    const mem = await arrivals.take(sha);
    if (mem) return { data: mem, fresh: true };
    const data = (await placements.read(sha)) ?? (await ctx.spool.read(sha)) ?? (await ctx.local.read(sha));
    return data ? { data, fresh: false } : null;
  };
  let fetchError: BlocksUnavailable | null = null;
  const fetching = (async () => {
    if (!toFetch.length) return;
    const sizes = new Map([...need.values()].map((n) => [n.sha.toString('hex'), n.length]));
    trace(`pull ${vm}: fetching ${toFetch.length} blocks`);
    try {
      const got = await ctx.fetch(
        toFetch,
        (h) => sizes.get(h.toString('hex')) ?? BLOCK_SIZE,
        (h, data) => arrivals.arrive(h, data),
      );
      trace(`pull ${vm}: fetched ${got.fetched} blocks, ${got.wireBytes} bytes (${(arrivals.bytes / 1048576).toFixed(1)} MiB of them wait for the writer)`);
      report.blocks_fetched = got.fetched;
      report.bytes_received = got.wireBytes;
      if (got.failed.length) {
        fetchError = new BlocksUnavailable(
          `cannot pull ${peer}'s ${vm}: ${got.failed.length} block(s) could not be fetched${got.corrupt ? ` (${got.corrupt} arrived corrupt)` : ''}; nothing was registered`,
          'sync again later; blocks already received are kept and not fetched again',
          got.failed,
          got.corrupt,
          got.notServed,
        );
      }
    } finally {
      // Nothing more will come: a writer still waiting finds its block missing (and fails).
      arrivals.endFetch();
    }
  })();
  // Step 5: build and register, while the blocks come. A fetch that fails wins over what the writer
  // then reports (a missing block); the build never commits without every block (digest check).
  const building = build(ctx, vm, placed, chain, missing, blockOf, { placements, spool: ctx.spool }, () => {
    arrivals.endWriter(); // every layer is written: nothing more is taken from memory
    return fetching.then(() => {
      if (fetchError) throw fetchError;
    });
  }).finally(() => arrivals.endWriter());
  const [f, b] = await Promise.allSettled([fetching, building]);
  if (f.status === 'rejected' || fetchError || b.status === 'rejected') {
    // Blocks that arrived and were never written: kept for the next sync, like the placed ones.
    for (const [h, data] of arrivals.takeAll()) await ctx.spool.append(h, data);
  }
  await ctx.spool.flush();
  await placements.close();
  if (f.status === 'rejected') throw f.reason;
  if (fetchError) throw fetchError;
  if (b.status === 'rejected') throw b.reason;
  const built = b.value;
  trace(`pull ${vm}: built and registered (blocks for the writer: ${arrivals.fromMemory} in memory, ${arrivals.elsewhere} read back)`);
  report.snapshots = built;
  return report;
}

/**
 * Step 3: what the layers of `missing` would write (WriteBudget: headers, L1 and L2 tables, data
 * clusters, refcounts) against the free space where they land and `ctx.maxWrite`, and every disk
 * against `ctx.maxVirtualSize`: a teammate's catalog of a few bytes must not make us write without
 * bound (attack 2 of issue #11, the zero-range bomb). Pure arithmetic over the verified maps.
 */
async function chargeChain(ctx: PullContext, vm: string, placed: Placement, missing: VerifiedSnapshot[]): Promise<void> {
  const what = `pull of ${ctx.peerName}'s ${vm}`;
  for (const s of missing) for (const d of s.disks) checkVirtualSize(d.virtual_size, ctx.maxVirtualSize, `${what} (snapshot ${s.name}, disk ${d.target})`);
  const dir = placed.exists ? path.dirname((await loadVm(ctx.home, placed.name)).disks[0]?.path ?? ctx.home.disksDir) : ctx.home.disksDir;
  const budget = new WriteBudget({ free: await freeSpace(dir), maxWrite: ctx.maxWrite, what });
  for (const s of missing) {
    for (const m of s.maps) {
      budget.beginLayer(m.virtualSize, m.clusterSize);
      for (const it of m.items) {
        if (it.kind === 'block') budget.data(it.offset, it.length);
        else if (s.parent !== null) budget.zero(it.offset, it.length); // a root's zeros are not written
      }
      budget.endLayer();
    }
  }
}

const strayHint = 'move the stray file away (a disk left by `vm remove`?), then sync again';

interface LayerPlan extends Landing {
  snap: VerifiedSnapshot;
  disk: number;
  target: string;
  backing: string | null;
}

/**
 * Step 5. `blockOf` gives each block (waiting for blocks still on their way); `fetched` resolves once
 * every block came (rejects when some could not be fetched): nothing is committed before it.
 *
 * The layers are written without the VM lock, under hidden temporary names listed in PullTemps, so a
 * VM being extended stays usable for as long as the transfer takes. The lock is taken for the commit
 * only: the VM is checked again (its snapshots and disks must be the ones the chain was placed on,
 * otherwise the pull fails and the blocks stay in the spool), the temporaries pass to the VM's journal,
 * and one journal commit renames them and writes the records.
 */
async function build(
  ctx: PullContext,
  remoteVm: string,
  placed: Placement,
  chain: VerifiedSnapshot[],
  missing: VerifiedSnapshot[],
  blockOf: BlockGetter,
  keep: BlockKeep,
  fetched: () => Promise<void>,
): Promise<string[]> {
  const { home, temps } = ctx;
  const name = placed.name;
  const todo = missing.filter((m) => !placed.localByKey.has(m.key));
  if (!todo.length) return [];
  const changed = () => chainError(`VM ${name} changed while pulling ${ctx.peerName}'s ${remoteVm}; sync again`);
  const vm: VmRecord | null = placed.exists ? await loadVm(home, name) : null;
  const targets = [...new Set(todo[0]!.disks.map((d) => d.target))].sort();
  const diskPath = new Map<string, string>();
  const made: string[] = []; // temporaries (and a new VM's disk directory) created here
  let madeDir: string | null = null;
  let committed = false;
  try {
    if (vm) {
      for (const d of vm.disks) diskPath.set(d.target, d.path);
      for (const t of targets) if (!diskPath.has(t)) throw chainError(`VM ${name} has no disk ${t}, which ${ctx.peerName}'s ${remoteVm} has`);
    } else {
      const dir = path.join(home.disksDir, name);
      if (!(await pathExists(dir))) {
        madeDir = dir;
        await temps.add(dir + path.sep);
        made.push(dir + path.sep);
      }
      await ensureDir(dir);
      for (const t of targets) diskPath.set(t, newDiskPath(dir, name, t));
      await refuseExisting([...diskPath.values()], strayHint);
    }
    const layerOf = new Map<string, Map<string, string>>(); // snapKey -> target -> layer path
    const nameOf = new Map<string, string>();
    for (const [key, s] of placed.localByKey) {
      layerOf.set(key, new Map(s.disks.map((d) => [d.target, d.path])));
      nameOf.set(key, s.name);
    }
    const plans: LayerPlan[] = [];
    for (const s of todo) {
      const mine = new Map<string, string>();
      for (const [di, d] of s.disks.entries()) {
        const dp = diskPath.get(d.target);
        if (!dp) throw chainError(`snapshot ${s.name} of ${ctx.peerName}'s ${remoteVm} has a disk ${d.target} the others lack`);
        const final = layerPathFor(dp, s.name);
        await refuseExisting([final], strayHint);
        const parentLayer = s.parentKey ? (layerOf.get(s.parentKey)?.get(d.target) ?? null) : null;
        if (s.parentKey && !parentLayer) throw chainError(`snapshot ${s.name} of ${ctx.peerName}'s ${remoteVm}: its parent has no ${d.target} layer`);
        plans.push({
          snap: s,
          disk: di,
          target: d.target,
          final,
          temp: landingTemp(final, 'sync'),
          backing: parentLayer === null ? null : path.relative(path.dirname(final), parentLayer),
        });
        mine.set(d.target, final);
      }
      layerOf.set(s.key, mine);
      nameOf.set(s.key, s.name);
    }

    // Unlocked: write every layer as its blocks arrive.
    const total = plans.reduce((a, p) => a + p.snap.maps[p.disk]!.dataBytes, 0);
    let done = 0;
    await temps.add(...plans.map((p) => p.temp));
    made.push(...plans.map((p) => p.temp));
    for (const p of plans) {
      done += await writeLayer(blockOf, keep, p.temp, p.backing, p.snap.maps[p.disk]!, (n) => ctx.progress?.(name, done + n, total));
    }
    // Durable before the journal names them: all together, not one fsync (and one of the directory)
    // per layer.
    trace(`pull ${remoteVm}: layers written`);
    await syncFiles(plans.map((p) => p.temp));
    await keep.placements.settle();
    trace(`pull ${remoteVm}: layers synced`);
    await fetched();
    checkAborted(ctx.signal);

    // Locked: check, hand over, commit.
    const hadVmDir = await pathExists(path.join(home.vmsDir, name));
    const lock = await lockVm(home, name, 'snapshot sync');
    try {
      await recover(home, name, driverStepHandlers);
      let cur: VmRecord | null = null;
      if (await vmExists(home, name)) {
        if (!placed.exists) throw chainError(`VM ${name} appeared while pulling ${ctx.peerName}'s ${remoteVm}; sync again`);
        cur = await loadVm(home, name);
        const snaps = await listSnapshotRecords(home, name);
        if (snaps.some((s) => !s.content_id)) await ensureContentIds(home, snaps);
        // The chain was placed on these snapshots and disks, and the new layers stand on their files.
        if (snaps.length !== placed.localByKey.size) throw changed();
        for (const s of snaps) {
          const was = s.content_id ? placed.localByKey.get(snapKey(s.content_id, s.name)) : undefined;
          if (!was || was.name !== s.name || JSON.stringify(was.disks) !== JSON.stringify(s.disks)) throw changed();
        }
        if (JSON.stringify(cur.disks) !== JSON.stringify(vm!.disks)) throw changed();
        for (const m of todo) {
          if (snaps.some((s) => s.name === m.name))
            throw chainError(`snapshot ${m.name} already exists in VM ${name} with other content`, 'rename it, then sync again');
        }
      } else if (placed.exists) throw chainError(`VM ${name} vanished while pulling; sync again`);
      await refuseExisting([...plans.map((p) => p.final), ...(cur ? [] : [...diskPath.values()])], strayHint);

      // The head the sharer stands on (else the newest pulled snapshot). A Head record names a content
      // id: of snapshots sharing it (the same state), the newest in the catalog is taken.
      const headHex = ctx.view.heads.get(remoteVm)?.toString('hex') ?? null;
      const headSnap = headHex === null ? undefined : [...chain].reverse().find((c) => c.id === headHex && layerOf.has(c.key));
      const head = headSnap?.key ?? todo[todo.length - 1]!.key;
      let fastForward = !cur;
      const curKey = cur && cur.current !== null ? ([...placed.localByKey].find(([, s]) => s.name === cur!.current)?.[0] ?? null) : null;
      if (cur && curKey !== null) {
        // Moves the current state to the new head only when it stands, unchanged, on an ancestor of it.
        let anc: string | null = head;
        let isAnc = false;
        const byKey = new Map(chain.map((c) => [c.key, c]));
        while (anc !== null) {
          if (anc === curKey) {
            isAnc = true;
            break;
          }
          anc = byKey.get(anc)?.parentKey ?? null;
        }
        fastForward = isAnc && curKey !== head && (await currentIsClean(cur.disks));
      }

      crashPoint('sync-commit'); // every layer written and synced, still listed in PullTemps
      const j = await Journal.begin(home, name, `snapshot sync ${ctx.peerName}/${remoteVm}`, driverStepHandlers);
      try {
        // The journal owns the layers from here (rollback deletes them, commit renames them).
        await j.willCreate(...plans.map((p) => p.temp));
        await temps.drop(plans.map((p) => p.temp));
        const overlayPlans: OverlayPlan[] = [];
        if (fastForward) {
          const top = chain.find((c) => c.key === head)!;
          for (const d of top.disks) {
            // The head may be a snapshot held here already (its maps were not read): the record's sizes.
            overlayPlans.push({
              final: diskPath.get(d.target)!,
              backing: layerOf.get(head)!.get(d.target)!,
              virtualSize: d.virtual_size,
              clusterSize: d.cluster_size,
            });
          }
        }
        const overlays = await landOverlays(j, overlayPlans, 'sync');
        const origin: SnapshotOrigin = {
          kind: 'pulled',
          team: ctx.team,
          member: ctx.peerName,
          member_key: ctx.peerKey,
          catalog_key: ctx.catalog.key.toString('hex'),
        };
        const records: SnapshotRecord[] = todo.map((s) => ({
          name: s.name,
          vm_name: name,
          type: s.type,
          state: 'ready',
          created_at: s.created_at,
          description: s.description,
          parent: s.parentKey ? nameOf.get(s.parentKey)! : null,
          tags: s.tags,
          auto_created: s.auto_created,
          auto_policy: s.auto_policy,
          expires_at: null,
          disks: s.disks.map((d) => ({ target: d.target, path: layerOf.get(s.key)!.get(d.target)! })),
          size_bytes: s.disks.reduce((a, d) => a + d.data_bytes, 0),
          content_id: s.id,
          memory_path: null,
          origin,
        }));
        const headName = nameOf.get(head)!;
        const vmRec: VmRecord = cur
          ? { ...cur, current: fastForward ? headName : cur.current }
          : {
              format: 1,
              name,
              driver: 'image',
              created_at: nowIso(),
              disks: targets.map((t) => ({ target: t, path: diskPath.get(t)! })),
              current: headName,
            };
        await commitLanding(j, home, name, [...plans, ...overlays], records, vmRec);
        committed = true;
      } catch (err) {
        await j.rollback().catch(() => undefined);
        throw err;
      }
    } finally {
      await lock.release();
      if (!committed && !hadVmDir && !(await vmExists(home, name))) {
        await rm(path.join(home.vmsDir, name), { recursive: true, force: true }).catch(() => undefined);
      }
    }
    // The new layers' maps are known (verified): later pulls reuse their blocks without reading them.
    for (const p of plans) {
      const m = p.snap.maps[p.disk]!;
      await rememberLayerMap(home, p.final, false, m);
      await ctx.local.addPulled(p.final, m);
    }
    return todo.map((s) => s.name);
  } finally {
    if (!committed) {
      // The blocks placed in the layers go to the spool before the layers go: the next sync reuses them.
      const n = await keep.placements.salvageTo(keep.spool).catch(() => 0);
      if (n) trace(`pull ${remoteVm}: ${n} placed blocks salvaged into the spool`);
      for (const f of made) if (!f.endsWith(path.sep)) await unlink(f).catch(() => undefined);
      if (madeDir) await rmdir(madeDir).catch(() => undefined);
    }
    if (made.length) await temps.drop(made).catch(() => undefined);
  }
}

/**
 * Writes one layer from its verified map; every block is hashed again on the way. Returns data bytes.
 * The layer is written at `file` itself (a listed temporary), so that placed.idx can name it while it
 * is written; a fetched block is noted where it went (placements), or spooled when it did not go
 * anywhere as it is (gathered into a larger cluster).
 */
async function writeLayer(
  blockOf: BlockGetter,
  keep: BlockKeep,
  file: string,
  backing: string | null,
  m: LayerMap,
  onBytes: (n: number) => void,
): Promise<number> {
  const w = await Qcow2Writer.create(file, {
    mode: 0o600,
    virtualSize: m.virtualSize,
    clusterSize: m.clusterSize,
    backingFile: backing,
    backingFormat: backing ? 'qcow2' : null,
    inPlace: true,
  });
  keep.placements.writing(file, w);
  const asm = new LayerAssembler(w, () => chainError('map blocks do not fill whole clusters'));
  let bytes = 0;
  try {
    const dg = digestOfItems(m.virtualSize, m.clusterSize, []);
    for (const it of m.items as MapItem[]) {
      if (it.kind === 'zero') {
        if (asm.pending) throw new CloneboxError('INTERNAL', 'a cluster was left half written');
        // A root reads as zero where nothing is allocated: zero clusters there would only cost
        // metadata (one L2 entry per cluster, for a few bytes of catalog).
        if (backing !== null) await w.writeZero(it.offset, it.length);
        dg.addZero(it.offset, it.length);
        continue;
      }
      const got = await blockOf(it.sha);
      if (!got || got.data.length !== it.length) {
        throw chainError(`block ${it.sha.toString('hex').slice(0, 12)} needed at ${it.offset} is no longer available here`, 'sync again');
      }
      dg.addBlock(it.offset, it.length, it.sha); // data was hashed against it.sha on arrival or by read()
      bytes += it.length;
      if (bytes % (8 * 1024 * 1024) < it.length) onBytes(bytes);
      const host = await asm.block(it.offset, got.data);
      if (got.fresh) {
        if (host >= 0) keep.placements.placed(it.sha, host, it.length);
        else await keep.spool.append(it.sha, got.data); // the writer copied it: the spool may keep it
      }
    }
    if (asm.pending) throw chainError('map blocks do not fill whole clusters');
    if (!dg.digest().equals(m.digest)) throw chainError('a pulled layer does not match its digest');
    await w.finish({ durable: false }); // build() syncs every layer together
  } catch (err) {
    // The file stays until build() salvaged its placed blocks (then removes it, with the others).
    await w.abandon();
    throw err;
  } finally {
    keep.placements.done(file);
  }
  onBytes(bytes);
  await stat(file);
  return bytes;
}
