/**
 * Sharing: which VMs this workstation shares with a team, publishing their snapshots in the catalog,
 * and serving their blocks.
 *
 * `snapshot share <vm> --team T [--name N]` records the VM in <home>/sync/<team>/shares.json (the
 * local truth, written atomically under the team lock) and, when the catalog is free, publishes right
 * away. Every `sync` publishes again: the catalog gets a Share/Unshare record for each change of
 * shares.json, the maps and Snapshot records of snapshots not published yet (parents first, each
 * snapshot's maps and record appended together), and a Head record when the VM's current snapshot
 * moved. So a shared VM's later snapshots follow; `unshare` stops that (what teammates already pulled
 * stays theirs).
 *
 * `snapshot share --group G` shares every member VM of the group as `share VM` does (whole chains) and
 * records the group in shares.json; publishing then appends a Group record for each ready group
 * snapshot once every member snapshot it names is published (docs/groups.md, "Sharing a group").
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Codec, compressBound, FRAME_TARGET } from '../content/codec.js';
import { WorkerPool } from '../content/workers.js';
import { CloneboxError } from '../errors.js';
import { ensureDir, pathExists, writeJsonAtomic } from '../fsutil.js';
import { checkName } from '../names.js';
import { BlockingReads } from '../qcow2/blocking-reads.js';
import { Chain } from '../qcow2/chain.js';
import { ChainReader } from '../qcow2/chain-reader.js';
import { contentId, isResolvedLayer } from '../snapshots/identity.js';
import { checkGroupName, groupFile, listGroupSnapshotRecords, loadGroup } from '../store/groups.js';
import type { Home } from '../store/home.js';
import { acquireLock } from '../store/lock.js';
import { listVmNames, loadVm, vmExists } from '../store/registry.js';
import { listSnapshotRecords, originOf, type SnapshotRecord } from '../store/snapshots.js';
import type { BlockSource, SourcePart } from './blocks.js';
import { Catalog, type CatalogView, syncDir } from './catalog.js';
import { type CatalogRecord, type GroupRecordEntry, MAX_MAP_ITEMS, type MapRecord, type SnapshotRecordEntry } from './catalog-records.js';
import { ensureIdentity } from './identity.js';
import { cachedLayerMap } from './layermap.js';
import { type BlockFrame, MAX_FRAME_RAW } from './messages.js';
import type { FramePace } from './pace.js';
import { loadTeam, type TeamRecord } from './teams.js';

interface SharesFile {
  format: 1;
  vms: Record<string, { upto: string | null; since: string }>;
  /** Groups shared (`share --group`); absent in files of older builds. */
  groups?: Record<string, { since: string }>;
}

function sharesFile(home: Home, team: string): string {
  return path.join(syncDir(home, team), 'shares.json');
}

async function loadShares(home: Home, team: string): Promise<SharesFile> {
  try {
    const doc = JSON.parse(await readFile(sharesFile(home, team), 'utf8')) as SharesFile;
    if (doc.format !== 1 || typeof doc.vms !== 'object' || (doc.groups !== undefined && typeof doc.groups !== 'object')) throw new Error('unexpected shape');
    return doc;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { format: 1, vms: {} };
    throw new CloneboxError('STORE_CORRUPT', `shares record is damaged (${(err as Error).message}), ${sharesFile(home, team)}`);
  }
}

async function updateShares(home: Home, team: string, fn: (s: SharesFile) => SharesFile): Promise<SharesFile> {
  const file = sharesFile(home, team);
  await ensureDir(path.dirname(file));
  const lock = await acquireLock(`${file}.lock`, `shares of team ${team}`, 'snapshot share');
  try {
    const next = fn(await loadShares(home, team));
    await writeJsonAtomic(file, next);
    return next;
  } finally {
    await lock.release();
  }
}

export interface ShareResult {
  vm: string;
  team: string;
  upto: string | null;
  /** Snapshots now in the catalog for this VM (null when a running sync holds the catalog: it publishes). */
  published: string[] | null;
}

export async function shareVm(home: Home, team: string, vm: string, upto: string | null, log?: (l: string) => void): Promise<ShareResult> {
  checkName('VM', vm);
  if (upto !== null) checkName('snapshot', upto);
  const rec = await loadTeam(home, team);
  await loadVm(home, vm);
  if (upto !== null) {
    const snaps = await listSnapshotRecords(home, vm);
    if (!snaps.some((s) => s.name === upto)) {
      throw new CloneboxError('SNAPSHOT_NOT_FOUND', `no such snapshot ${upto}, VM ${vm}`, { hint: `see \`clonebox snapshot list ${vm}\`` });
    }
  }
  await updateShares(home, team, (s) => ({ ...s, vms: { ...s.vms, [vm]: { upto, since: new Date().toISOString() } } }));
  const published = await publishNow(home, rec, log, (res) => res.find((r) => r.vm === vm)?.snapshots ?? []);
  return { vm, team, upto, published };
}

/**
 * Publishes at once when our catalog is free, then `then` reads the outcome; null when a running sync
 * holds the catalog (it publishes within seconds).
 */
async function publishNow<T>(
  home: Home,
  team: TeamRecord,
  log: ((l: string) => void) | undefined,
  then: (res: Awaited<ReturnType<typeof publish>>, cat: Catalog) => T | Promise<T>,
): Promise<T | null> {
  let cat: Catalog;
  try {
    cat = await Catalog.openOwn(home, team, await ensureIdentity(home));
  } catch (err) {
    if ((err as CloneboxError).code === 'SYNC_BUSY') return null;
    throw err;
  }
  try {
    return await then(await publish(home, team.team, cat, log), cat);
  } finally {
    await cat.close();
  }
}

export interface ShareGroupResult {
  group: string;
  team: string;
  /** The member VMs now shared (every VM the group or one of its group snapshots names that exists here). */
  vms: string[];
  /** Group snapshots now in the catalog (null when a running sync holds the catalog: it publishes). */
  published: string[] | null;
}

/**
 * Shares group `group`: each member VM's whole chain (as `share VM` without --name: a group snapshot
 * needs every member's line up to it) and the group's snapshots.
 */
export async function shareGroup(home: Home, team: string, group: string, log?: (l: string) => void): Promise<ShareGroupResult> {
  checkGroupName(group);
  const rec = await loadTeam(home, team);
  const g = await loadGroup(home, group);
  const named = new Set(g.members);
  for (const s of await listGroupSnapshotRecords(home, group)) for (const m of s.members) named.add(m.vm);
  const vms: string[] = [];
  for (const vm of [...named].sort()) {
    if (await vmExists(home, vm)) vms.push(vm);
    else log?.(`group ${group} names VM ${vm}, which no longer exists here: its group snapshots cannot be shared`);
  }
  const since = new Date().toISOString();
  await updateShares(home, team, (s) => ({
    ...s,
    vms: { ...s.vms, ...Object.fromEntries(vms.map((vm) => [vm, { upto: null, since: s.vms[vm]?.upto === null ? s.vms[vm].since : since }])) },
    groups: { ...s.groups, [group]: { since: s.groups?.[group]?.since ?? since } },
  }));
  const published = await publishNow(home, rec, log, async (_, cat) => ((await cat.view()).groups.get(group) ?? []).map((r) => r.name));
  return { group, team, vms, published };
}

export async function unshareVm(home: Home, team: string, vm: string): Promise<{ vm: string; team: string; was_shared: boolean }> {
  checkName('VM', vm);
  const rec = await loadTeam(home, team);
  let was = false;
  await updateShares(home, team, (s) => {
    was = vm in s.vms;
    const vms = { ...s.vms };
    delete vms[vm];
    return { ...s, vms };
  });
  await publishNow(home, rec, undefined, () => undefined);
  return { vm, team, was_shared: was };
}

/**
 * The snapshots a share covers: root..upto, or every ready snapshot; parents before children. Never a
 * snapshot pulled from a teammate, nor one standing on it: those are its author's, served on under the
 * author's catalog (relaying), never published as ours.
 */
function sharedLine(snaps: SnapshotRecord[], upto: string | null): SnapshotRecord[] {
  const byName = new Map(snaps.map((s) => [s.name, s]));
  let chosen: SnapshotRecord[];
  if (upto !== null) {
    chosen = [];
    for (let cur: string | null = upto; cur !== null && chosen.length <= snaps.length; cur = byName.get(cur)?.parent ?? null) {
      const r = byName.get(cur);
      if (!r) break;
      chosen.push(r);
    }
    chosen.reverse();
  } else {
    // Every snapshot whose whole ancestry is ready, parents first.
    const depth = new Map<string, number>();
    const depthOf = (s: SnapshotRecord): number => {
      let d = 0;
      for (let cur = s.parent; cur !== null && d <= snaps.length; cur = byName.get(cur)?.parent ?? null) d++;
      return d;
    };
    for (const s of snaps) depth.set(s.name, depthOf(s));
    chosen = [...snaps].sort((a, b) => depth.get(a.name)! - depth.get(b.name)! || a.created_at.localeCompare(b.created_at));
  }
  const ok = new Set<string>();
  return chosen.filter((s) => {
    const good = s.state === 'ready' && originOf(s).kind !== 'pulled' && (s.parent === null || ok.has(s.parent));
    if (good) ok.add(s.name);
    return good;
  });
}

/** Largest frame served: FRAME_TARGET, within the wire's limit. */
const FRAME_LIMIT = Math.min(FRAME_TARGET, MAX_FRAME_RAW);
/** The level of frames served without a pace (the bundle's default). */
const DEFAULT_LEVEL = 3;
/** Frame buffers kept for reuse: the channels' frames under way (SERVE_AHEAD each) and a few more. */
const POOL_DEPTH = 12;

const keyOf = (name: string, createdAt: string) => `${name}\u0000${createdAt}`;

/** Shared VMs (team/vm) whose pulled snapshots publish() has said it leaves out. */
const toldPulled = new Set<string>();

/** Entries and (estimated) bytes of one batch of snapshots appended to the catalog by publish(). */
const BATCH_ENTRIES = 256;
const BATCH_BYTES = 8 * 1024 * 1024;
/** Estimates for BATCH_BYTES: a map item's encoded size at most (kind, two varints, hash), a Snapshot record's. */
const MAP_ITEM_BYTES = 1 + 9 + 9 + 32;
const SNAPSHOT_RECORD_BYTES = 4096;

/**
 * Brings the catalog up to date with shares.json and the shared VMs' snapshots. Returns, per shared
 * VM, the snapshots it holds in the catalog.
 */
export async function publish(
  home: Home,
  team: string,
  cat: Catalog,
  log?: (l: string) => void,
): Promise<{ vm: string; snapshots: string[]; appended: number }[]> {
  const shares = await loadShares(home, team);
  const view = await cat.view();
  const now = new Date().toISOString();
  const head: CatalogRecord[] = [];
  for (const [vm, s] of Object.entries(shares.vms)) {
    const cur = view.shares.get(vm);
    if (!cur || cur.upto !== s.upto) head.push({ kind: 'share', vm, upto: s.upto, at: now });
  }
  for (const vm of view.shares.keys()) if (!(vm in shares.vms)) head.push({ kind: 'unshare', vm, at: now });
  await cat.append(head);

  const out: { vm: string; snapshots: string[]; appended: number }[] = [];
  /** vm -> local snapshot name -> published content id (for the Group records). */
  const ids = new Map<string, Map<string, string>>();
  for (const [vm, s] of Object.entries(shares.vms)) {
    if (!(await vmExists(home, vm))) {
      log?.(`shared VM ${vm} no longer exists here; nothing new to publish`);
      continue;
    }
    const vmRec = await loadVm(home, vm);
    const snaps = await listSnapshotRecords(home, vm);
    const line = sharedLine(snaps, s.upto);
    const pulled = snaps.filter((x) => originOf(x).kind === 'pulled');
    if (pulled.length && !toldPulled.has(`${team}/${vm}`)) {
      toldPulled.add(`${team}/${vm}`); // once per process: a --watch republishes every 5 s
      log?.(
        `shared VM ${vm}: ${pulled.length} snapshot(s) pulled from teammates (and what stands on them) are not published as this workstation's; teammates get them from their author's catalog`,
      );
    }
    const published = new Map<string, SnapshotRecordEntry & { id: string }>();
    for (const p of view.snapshots.get(vm) ?? []) published.set(keyOf(p.name, p.created_at), p);
    const idOf = new Map<string, string>(); // local snapshot name -> published content id
    ids.set(vm, idOf);
    for (const r of line) {
      const p = published.get(keyOf(r.name, r.created_at));
      if (p) idOf.set(r.name, p.id);
    }
    let appended = 0;
    // Snapshots are appended in batches, one Hypercore append (one write to its storage) each: record
    // by record, a first share of 1,000 snapshots took minutes of storage writes. A batch holds whole
    // snapshots (maps and record), so the catalog only ever grows by complete snapshots.
    const batch: CatalogRecord[] = [];
    let batchBytes = 0;
    let batchSnapshots = 0;
    let appendedEntries = 0;
    const base = cat.length;
    const flush = async () => {
      if (!batch.length) return;
      const at = await cat.append(batch);
      if (at !== base + appendedEntries) throw new CloneboxError('INTERNAL', `catalog grew while publishing ${vm}`);
      appendedEntries += batch.length;
      appended += batchSnapshots;
      batch.length = 0;
      batchBytes = 0;
      batchSnapshots = 0;
    };
    for (const r of line) {
      if (idOf.has(r.name)) continue;
      const parentId = r.parent === null ? null : (idOf.get(r.parent) ?? null);
      if (r.parent !== null && parentId === null) continue; // parent not publishable
      const recs: CatalogRecord[] = [];
      const disks: SnapshotRecordEntry['disks'] = [];
      let index = base + appendedEntries + batch.length;
      for (const d of [...r.disks].sort((a, b) => (a.target < b.target ? -1 : 1))) {
        const resolved = await isResolvedLayer(r, d.path);
        const m = await cachedLayerMap(home, d.path, resolved);
        const start = index;
        for (let i = 0; i < m.items.length || i === 0; i += MAX_MAP_ITEMS) {
          const items = m.items.slice(i, i + MAX_MAP_ITEMS);
          if (!items.length) break;
          recs.push({ kind: 'map', vm, target: d.target, items } satisfies MapRecord);
          batchBytes += items.length * MAP_ITEM_BYTES;
          index++;
        }
        disks.push({
          target: d.target,
          virtual_size: m.virtualSize,
          cluster_size: m.clusterSize,
          digest: m.digest,
          data_bytes: m.dataBytes,
          zero_bytes: m.zeroBytes,
          blocks: m.blocks,
          map_start: start,
          map_count: index - start,
        });
      }
      const id = contentId(
        parentId,
        disks.map((d) => ({ target: d.target, digest: d.digest })),
      );
      if (r.content_id && r.content_id !== id)
        log?.(`snapshot ${r.name} of ${vm}: its layers no longer give its recorded content id (merged?); published by content`);
      recs.push({
        kind: 'snapshot',
        vm,
        name: r.name,
        content_id: Buffer.from(id, 'hex'),
        parent: parentId === null ? null : Buffer.from(parentId, 'hex'),
        parent_name: parentId === null ? null : r.parent,
        type: r.type,
        created_at: r.created_at,
        description: r.description,
        tags: r.tags,
        auto_created: r.auto_created,
        auto_policy: r.auto_policy,
        disks,
      });
      for (const x of recs) batch.push(x);
      batchBytes += SNAPSHOT_RECORD_BYTES;
      batchSnapshots++;
      idOf.set(r.name, id);
      if (batch.length >= BATCH_ENTRIES || batchBytes >= BATCH_BYTES) await flush();
    }
    await flush();
    // Head: the current snapshot when it is shared, else the newest shared one on its line.
    let headName: string | null = vmRec.current;
    while (headName !== null && !idOf.has(headName)) headName = snaps.find((x) => x.name === headName)?.parent ?? null;
    if (s.upto !== null) headName = idOf.has(s.upto) ? s.upto : headName;
    const headId = headName === null ? null : idOf.get(headName)!;
    const prev = view.heads.get(vm);
    if (prev === undefined || (prev === null ? null : prev.toString('hex')) !== headId) {
      await cat.append([{ kind: 'head', vm, content_id: headId === null ? null : Buffer.from(headId, 'hex') }]);
    }
    out.push({ vm, snapshots: line.filter((r) => idOf.has(r.name)).map((r) => r.name), appended });
  }
  await publishGroups(home, shares, cat, view, ids, log);
  return out;
}

/**
 * Appends a Group record for each ready group snapshot of a shared group that is not in the catalog
 * yet and whose member snapshots all are (`ids`): a teammate then finds every member it names. The
 * others wait for a later publish (a member still being published, or not publishable: pulled here).
 */
async function publishGroups(
  home: Home,
  shares: SharesFile,
  cat: Catalog,
  view: CatalogView,
  ids: Map<string, Map<string, string>>,
  log?: (l: string) => void,
): Promise<void> {
  for (const group of Object.keys(shares.groups ?? {}).sort()) {
    if (!(await pathExists(groupFile(home, group)))) {
      log?.(`shared group ${group} no longer exists here; nothing new to publish`);
      continue;
    }
    const done = new Set((view.groups.get(group) ?? []).map((g) => keyOf(g.name, g.created_at)));
    const snaps = (await listGroupSnapshotRecords(home, group)).filter((g) => g.state === 'ready').sort((a, b) => a.created_at.localeCompare(b.created_at));
    const recs: GroupRecordEntry[] = [];
    for (const g of snaps) {
      if (done.has(keyOf(g.name, g.created_at))) continue;
      const members = [...g.members].sort((a, b) => (a.vm < b.vm ? -1 : 1)).map((m) => ({ ...m, id: ids.get(m.vm)?.get(m.snapshot) }));
      if (members.some((m) => m.id === undefined)) continue;
      recs.push({
        kind: 'group',
        group,
        name: g.name,
        created_at: g.created_at,
        description: g.description,
        tags: g.tags,
        type: g.type,
        consistency: g.consistency,
        pause_ms: g.pause_ms,
        auto_created: g.auto_created,
        auto_policy: g.auto_policy,
        members: members.map((m) => ({ vm: m.vm, snapshot: m.snapshot, content_id: Buffer.from(m.id!, 'hex') })),
      });
    }
    await cat.append(recs);
  }
}

// ---- serving ----------------------------------------------------------------------------------------

interface Located {
  file: string;
  offset: number;
  length: number;
  /** The layer is a root: read through its whole chain (see chain()). */
  resolved: boolean;
}

/**
 * Serves the blocks of this workstation's shared chains: an index SHA-256 -> (local layer, offset)
 * built from our own catalog's maps of the VMs still shared, and of the chains it pulled from
 * teammates (so a teammate can get them while their author is offline), and frames read through the layer's
 * chain straight into reused buffers, compressed with zstd at the level the channel's pace chooses
 * (pace.ts: raw on a link that outruns the compressor, higher levels on a slow one; raw whenever zstd
 * does not make a frame smaller) on the bundle's worker threads (one per core) while the next frames
 * are read, at most FRAME_TARGET raw bytes.
 */
export class ShareSource implements BlockSource {
  private readonly index = new Map<string, Located>();
  private readonly chains = new Map<string, Promise<ChainReader>>();
  /**
   * Frames are read with blocking preads while the layers are page-cached: the read sits between a
   * request and its frame, and a thread-pool read waits for a core the compressing workers and the
   * peer keep busy (blocking-reads.ts).
   */
  private readonly blocking = new BlockingReads(FRAME_LIMIT);
  /** Frame buffers (input FRAME_TARGET, output its compress bound) given back after their frame was sent. */
  private readonly inputs: ArrayBuffer[] = [];
  private readonly outputs: ArrayBuffer[] = [];
  private own = 0;
  private pool: Promise<WorkerPool> | null = null;
  private pulled: { home: Home; team: string; catalogs: () => Catalog[]; onError: (err: Error) => void; done: Promise<void> | null } | null = null;
  blocksServed = 0;

  static async build(home: Home, cat: Catalog, view?: CatalogView): Promise<ShareSource> {
    const src = new ShareSource();
    const v = view ?? (await cat.view());
    for (const [vm] of v.shares) {
      if (!(await vmExists(home, vm))) continue;
      const snaps = await listSnapshotRecords(home, vm);
      const local = new Map(snaps.map((s) => [keyOf(s.name, s.created_at), s]));
      for (const p of v.snapshots.get(vm) ?? []) {
        const l = local.get(keyOf(p.name, p.created_at));
        if (l?.state !== 'ready') continue;
        for (const d of p.disks) {
          const file = l.disks.find((x) => x.target === d.target)?.path;
          if (!file) continue;
          for (const it of await cat.mapItems(d.map_start, d.map_count, vm, d.target)) {
            if (it.kind === 'block') src.index.set(it.sha.toString('hex'), { file, offset: it.offset, length: it.length, resolved: l.parent === null });
          }
        }
      }
    }
    src.own = src.index.size; // pulled chains are added later (servePulled)
    return src;
  }

  /**
   * Serves the chains this home pulled from teammates' `catalogs()` too (see addPulled). They are
   * indexed on the first request: reading those catalogs' maps up front would slow down every
   * pulling-only sync for chains that nobody may ever ask for (bench/README.md).
   */
  servePulled(home: Home, team: string, catalogs: () => Catalog[], onError: (err: Error) => void): void {
    this.pulled = { home, team, catalogs, onError, done: null };
  }

  /** A chain was just pulled from `cat`: served from now, if pulled chains are indexed already. */
  async pulledFrom(cat: Catalog): Promise<void> {
    const p = this.pulled;
    if (!p?.done) return; // the index, when it is made, reads every local snapshot anyway
    await p.done;
    await this.addPulled(p.home, p.team, [cat]).catch(p.onError);
  }

  /** Resolves once no indexing of pulled chains is under way (before their catalogs close). */
  async settled(): Promise<void> {
    await this.pulled?.done;
  }

  private indexPulled(): Promise<void> {
    const p = this.pulled;
    if (!p) return Promise.resolve();
    p.done ??= this.addPulled(p.home, p.team, p.catalogs()).catch(p.onError);
    return p.done;
  }

  /**
   * Adds the chains this home pulled: a snapshot one of the teammates' catalogs `others` shares that
   * this home holds (a local snapshot with the same content id, which a pull verified layer by layer)
   * is served too, so teammates get it while its author is offline. Only what some teammate's catalog
   * lists is ever served: a member cannot probe for other local data by hash. And only snapshots pulled
   * from this team: a local snapshot that a member's catalog names by its content id (a member who
   * knows some content can publish a record of it) is never served, which would tell that member we
   * hold it.
   */
  async addPulled(home: Home, team: string, others: Catalog[]): Promise<void> {
    if (!others.length) return;
    const byId = new Map<string, SnapshotRecord>();
    for (const vm of await listVmNames(home)) {
      for (const s of await listSnapshotRecords(home, vm).catch(() => [])) {
        const o = originOf(s);
        if (s.content_id && s.state === 'ready' && o.kind === 'pulled' && o.team === team) byId.set(s.content_id, s);
      }
    }
    for (const o of others) {
      // A teammate's catalog not replicated in full yet would make view() wait for missing entries.
      if (o.core.contiguousLength < o.core.length || o.overLimit() !== null) continue;
      const ov = await o.view().catch(() => null);
      if (!ov) continue;
      for (const [vm] of ov.shares) {
        for (const p of ov.snapshots.get(vm) ?? []) {
          const l = byId.get(p.id);
          if (!l) continue;
          for (const d of p.disks) {
            const file = l.disks.find((x) => x.target === d.target)?.path;
            if (!file) continue;
            const items = await o.mapItems(d.map_start, d.map_count, vm, d.target).catch(() => []);
            for (const it of items) {
              if (it.kind === 'block' && !this.index.has(it.sha.toString('hex')))
                this.index.set(it.sha.toString('hex'), { file, offset: it.offset, length: it.length, resolved: l.parent === null });
            }
          }
        }
      }
    }
  }

  /** Blocks of this workstation's own shared chains (pulled chains served on are not counted). */
  get blocks(): number {
    return this.own;
  }

  /** `resolved`: a root, whose map may be its base image's data too (the others' are their own). */
  private chain(file: string, resolved: boolean): Promise<ChainReader> {
    let ch = this.chains.get(file);
    if (!ch) {
      ch = (resolved ? Chain.open(file) : Chain.openOwn(file)).then((c) => new ChainReader(c, this.blocking));
      ch.catch(() => this.chains.delete(file));
      this.chains.set(file, ch);
    }
    return ch;
  }

  /** A buffer of at least `n` bytes from `pool` (frames are at most FRAME_TARGET raw), else a new one. */
  private take(pool: ArrayBuffer[], n: number): ArrayBuffer {
    const b = pool.pop();
    // Sized for the largest frame so that any frame can reuse any buffer.
    return b && b.byteLength >= n ? b : new ArrayBuffer(Math.max(n, pool === this.inputs ? FRAME_LIMIT : compressBound(FRAME_LIMIT)));
  }

  private give(pool: ArrayBuffer[], b: ArrayBuffer): void {
    if (pool.length < POOL_DEPTH) pool.push(b);
  }

  /** The bundle's worker pool, started on first use: frames are compressed there, off this thread. */
  private workers(): Promise<WorkerPool> {
    this.pool ??= WorkerPool.start();
    return this.pool;
  }

  /** `pace` is required here so that a wrapper cannot drop it (a dropped pace served everything at level 3). */
  async *read(hashes: Buffer[], pace: FramePace | undefined): AsyncIterable<SourcePart | Promise<SourcePart>> {
    await this.indexPulled();
    const missing: Buffer[] = [];
    const found: { hash: Buffer; at: Located }[] = [];
    for (const h of hashes) {
      const at = this.index.get(h.toString('hex'));
      if (at) found.push({ hash: h, at });
      else missing.push(h);
    }
    if (missing.length) yield { missing };
    // In the order asked (the puller asks in layer order): contiguous blocks are read in one go.
    let i = 0;
    while (i < found.length) {
      const group: typeof found = [];
      let raw = 0;
      while (i < found.length && raw + found[i]!.at.length <= FRAME_LIMIT) {
        group.push(found[i]!);
        raw += found[i]!.at.length;
        i++;
      }
      // Read straight into the frame's buffer: one pread per piece, no per-read buffer, no copy.
      const data = Buffer.from(this.take(this.inputs, raw), 0, raw);
      let at = 0;
      let j = 0;
      while (j < group.length) {
        // A run of blocks adjacent in one file.
        let k = j + 1;
        while (k < group.length && group[k]!.at.file === group[j]!.at.file && group[k]!.at.offset === group[k - 1]!.at.offset + group[k - 1]!.at.length) k++;
        const first = group[j]!.at;
        const last = group[k - 1]!.at;
        const len = last.offset + last.length - first.offset;
        await (await this.chain(first.file, first.resolved)).readInto(first.offset, len, data.subarray(at, at + len));
        at += len;
        j = k;
      }
      this.blocksServed += group.length;
      const blocks = group.map((g) => ({ hash: g.hash, size: g.at.length }));
      const level = pace?.level() ?? DEFAULT_LEVEL;
      if (level === 0) {
        yield { frame: { codec: 0, blocks, data }, level, release: () => this.give(this.inputs, data.buffer as ArrayBuffer) };
        continue;
      }
      // Compressed on a worker while the next frame is read (the channel keeps a few under way).
      yield this.compress(data, blocks, level);
    }
  }

  /** zstd at `level` on a worker thread; raw when that is not smaller. `data`'s memory is handed over (transferred). */
  private async compress(data: Buffer, blocks: BlockFrame['blocks'], level: number): Promise<SourcePart> {
    const pool = await this.workers();
    const raw = data.length;
    const input = data.buffer as ArrayBuffer;
    const output = this.take(this.outputs, compressBound(raw));
    const t0 = performance.now();
    const rep = await pool.request(pool.pick(), { op: 'compress', id: pool.newId(), input, length: raw, output, level }, [input, output]);
    if (!('storedLength' in rep)) throw new CloneboxError('INTERNAL', 'unexpected reply from a compression worker');
    const zstd = rep.codec === Codec.Zstd;
    const release = () => {
      this.give(this.inputs, rep.input);
      this.give(this.outputs, rep.output);
    };
    return {
      frame: { codec: zstd ? 1 : 0, blocks, data: zstd ? Buffer.from(rep.output, 0, rep.storedLength) : Buffer.from(rep.input, 0, raw) },
      level,
      compressMs: performance.now() - t0,
      release,
    };
  }

  async close(): Promise<void> {
    for (const p of this.chains.values()) {
      const r = await p.catch(() => null);
      if (r) {
        await r.close();
        await r.chain.close();
      }
    }
    this.chains.clear();
    const pool = this.pool;
    this.pool = null;
    if (pool) await (await pool).close();
  }
}
