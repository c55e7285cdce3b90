/**
 * Layer maps for sync: a layer's normalised map (src/content/layer.ts) as zero extents and 64 KiB
 * blocks named by SHA-256, plus its layer digest. The sharer publishes them in its catalog; the
 * receiver uses them to find blocks it already has in any local layer (other VMs, earlier pulls).
 *
 * Maps of local layers are cached under <home>/sync/maps/ keyed by the layer's path and stamped with
 * its size, mtime and inode, so a layer is read once, not at every sync; the blocks of every layer a
 * sync may reuse are indexed in one file there (local-blocks.index), so a sync opens only the maps of
 * layers that are new or changed since the last.
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { Batcher } from '../content/batcher.js';
import { FRAME_TARGET } from '../content/codec.js';
import { LayerDigest } from '../content/digest.js';
import { openLayer } from '../content/layer.js';
import { ensureDir, writeFileAtomic } from '../fsutil.js';
import { Chain } from '../qcow2/chain.js';
import { isResolvedLayer } from '../snapshots/identity.js';
import type { Home } from '../store/home.js';
import { listVmNames } from '../store/registry.js';
import { listSnapshotRecords, type SnapshotRecord } from '../store/snapshots.js';
import type { MapItem } from './catalog-records.js';

export interface LayerMap {
  virtualSize: number;
  clusterSize: number;
  items: MapItem[];
  digest: Buffer;
  dataBytes: number;
  zeroBytes: number;
  blocks: number;
}

/**
 * Reads a whole layer: its map and digest. Memory: one batch of about 4 MiB plus the map.
 * @public bench/sync.bench.mjs imports it from the built dist/ tree, which knip does not follow.
 */
export async function computeLayerMap(file: string, resolved: boolean): Promise<LayerMap> {
  const src = await openLayer(file, resolved);
  try {
    const dg = new LayerDigest(src.virtualSize, src.clusterSize);
    const items: MapItem[] = [];
    const batcher = new Batcher(0, FRAME_TARGET, async (b) => {
      for (const it of b.items) {
        if (it.kind === 'zero') {
          dg.addZero(it.offset, it.length);
          const last = items[items.length - 1];
          if (last && last.kind === 'zero' && last.offset + last.length === it.offset) last.length += it.length;
          else items.push({ kind: 'zero', offset: it.offset, length: it.length });
        } else {
          const sha = createHash('sha256')
            .update(b.buf.subarray(it.at, it.at + it.length))
            .digest();
          dg.addBlock(it.offset, it.length, sha);
          items.push({ kind: 'block', offset: it.offset, length: it.length, sha });
        }
      }
    });
    for await (const p of src.pieces()) {
      if (p.kind === 'zero') await batcher.zero(p.offset, p.length);
      else await batcher.data(p.offset, p.length, p.fill);
    }
    await batcher.flush();
    return {
      virtualSize: src.virtualSize,
      clusterSize: src.clusterSize,
      items,
      digest: dg.digest(),
      dataBytes: dg.dataBytes,
      zeroBytes: dg.zeroBytes,
      blocks: dg.blocks,
    };
  } finally {
    await src.close();
  }
}

/** The digest a map defines (what the receiver recomputes from a catalog's map before trusting it). */
export function digestOfItems(virtualSize: number, clusterSize: number, items: MapItem[]): LayerDigest {
  const dg = new LayerDigest(virtualSize, clusterSize);
  for (const it of items) {
    if (it.kind === 'zero') dg.addZero(it.offset, it.length);
    else dg.addBlock(it.offset, it.length, it.sha);
  }
  return dg;
}

// ---- cache ------------------------------------------------------------------------------------------

const ITEM_BYTES = 1 + 8 + 8 + 32;

function encodeMap(stamp: string, resolved: boolean, m: LayerMap): Buffer {
  const head = Buffer.from(
    `${JSON.stringify({
      stamp,
      resolved,
      virtual_size: m.virtualSize,
      cluster_size: m.clusterSize,
      digest: m.digest.toString('hex'),
      data_bytes: m.dataBytes,
      zero_bytes: m.zeroBytes,
      blocks: m.blocks,
      items: m.items.length,
    })}\n`,
  );
  const body = Buffer.alloc(m.items.length * ITEM_BYTES);
  m.items.forEach((it, i) => {
    const at = i * ITEM_BYTES;
    body[at] = it.kind === 'zero' ? 0 : 1;
    body.writeDoubleBE(it.offset, at + 1);
    body.writeDoubleBE(it.length, at + 9);
    if (it.kind === 'block') it.sha.copy(body, at + 17);
  });
  return Buffer.concat([head, body]);
}

function decodeMap(buf: Buffer, stamp: string, resolved: boolean): LayerMap | null {
  const nl = buf.indexOf(10);
  if (nl < 0) return null;
  try {
    const h = JSON.parse(buf.subarray(0, nl).toString()) as Record<string, unknown>;
    if (h.stamp !== stamp || h.resolved !== resolved) return null;
    const n = Number(h.items);
    if (buf.length !== nl + 1 + n * ITEM_BYTES) return null;
    const items: MapItem[] = [];
    for (let i = 0; i < n; i++) {
      const at = nl + 1 + i * ITEM_BYTES;
      const offset = buf.readDoubleBE(at + 1);
      const length = buf.readDoubleBE(at + 9);
      items.push(buf[at] === 0 ? { kind: 'zero', offset, length } : { kind: 'block', offset, length, sha: Buffer.from(buf.subarray(at + 17, at + 49)) });
    }
    return {
      virtualSize: Number(h.virtual_size),
      clusterSize: Number(h.cluster_size),
      items,
      digest: Buffer.from(String(h.digest), 'hex'),
      dataBytes: Number(h.data_bytes),
      zeroBytes: Number(h.zero_bytes),
      blocks: Number(h.blocks),
    };
  } catch {
    return null;
  }
}

function cacheFile(home: Home, file: string): string {
  return path.join(home.root, 'sync', 'maps', `${createHash('sha256').update(path.resolve(file)).digest('hex').slice(0, 40)}.map`);
}

async function stampOf(file: string): Promise<string> {
  const st = await stat(file);
  return `${st.size}:${st.mtimeMs}:${st.ino}`;
}

/** The layer's map from the cache, or computed (and cached). */
export async function cachedLayerMap(home: Home, file: string, resolved: boolean): Promise<LayerMap> {
  const stamp = await stampOf(file);
  const cf = cacheFile(home, file);
  const cached = await readFile(cf).then(
    (b) => decodeMap(b, stamp, resolved),
    () => null,
  );
  if (cached) return cached;
  const m = await computeLayerMap(file, resolved);
  await ensureDir(path.dirname(cf), 0o700);
  // Every block hash of a layer: 0600, as the layers themselves.
  await writeFileAtomic(cf, encodeMap(stamp, resolved, m), 0o600).catch(() => undefined);
  return m;
}

/** Seeds the cache with a map we know is right (a layer just written from a verified map). */
export async function rememberLayerMap(home: Home, file: string, resolved: boolean, m: LayerMap): Promise<void> {
  const cf = cacheFile(home, file);
  await ensureDir(path.dirname(cf), 0o700);
  await writeFileAtomic(cf, encodeMap(await stampOf(file), resolved, m), 0o600).catch(() => undefined);
}

// ---- index of local blocks --------------------------------------------------------------------------

/**
 * <home>/sync/maps/local-blocks.index: what the last LocalBlocks.scan found, so that the next one
 * reads one file instead of a cached map per layer. A JSON line (format, and per layer its path,
 * stamp, whether it is read resolved, and its block count), then per layer its blocks, INDEX_ENTRY
 * bytes each: SHA-256, offset and length (doubles, big-endian). A layer whose stamp (size, mtime,
 * inode) changed is read again; a damaged or foreign index is ignored and rewritten. Blocks read
 * through it are still checked against their hash (LocalBlocks.read).
 */
const INDEX_FORMAT = 1;
const INDEX_ENTRY = 32 + 8 + 8;

interface IndexedLayer {
  file: string;
  stamp: string;
  resolved: boolean;
  /** Its blocks, INDEX_ENTRY bytes each. */
  body: Buffer;
}

function localIndexFile(home: Home): string {
  return path.join(home.root, 'sync', 'maps', 'local-blocks.index');
}

function blocksBody(m: LayerMap): Buffer {
  const blocks = m.items.filter((it) => it.kind === 'block');
  const body = Buffer.alloc(blocks.length * INDEX_ENTRY);
  blocks.forEach((it, i) => {
    const at = i * INDEX_ENTRY;
    it.sha.copy(body, at);
    body.writeDoubleBE(it.offset, at + 32);
    body.writeDoubleBE(it.length, at + 40);
  });
  return body;
}

/** The last scan's layers by path (empty when there is no index, or it is not one this code wrote). */
async function readLocalIndex(home: Home): Promise<Map<string, IndexedLayer>> {
  const out = new Map<string, IndexedLayer>();
  const buf = await readFile(localIndexFile(home)).catch(() => null);
  if (!buf) return out;
  const nl = buf.indexOf(10);
  if (nl < 0) return out;
  try {
    const h = JSON.parse(buf.subarray(0, nl).toString()) as { format?: unknown; layers?: unknown };
    if (h.format !== INDEX_FORMAT || !Array.isArray(h.layers)) return out;
    let at = nl + 1;
    for (const l of h.layers as { file?: unknown; stamp?: unknown; resolved?: unknown; blocks?: unknown }[]) {
      const n = l.blocks;
      if (typeof l.file !== 'string' || typeof l.stamp !== 'string' || typeof l.resolved !== 'boolean' || !Number.isSafeInteger(n) || (n as number) < 0) {
        return new Map();
      }
      const end = at + (n as number) * INDEX_ENTRY;
      if (end > buf.length) return new Map();
      out.set(l.file, { file: l.file, stamp: l.stamp, resolved: l.resolved, body: buf.subarray(at, end) });
      at = end;
    }
    return at === buf.length ? out : new Map();
  } catch {
    return new Map();
  }
}

async function writeLocalIndex(home: Home, layers: IndexedLayer[]): Promise<void> {
  const head = JSON.stringify({
    format: INDEX_FORMAT,
    layers: layers.map((l) => ({ file: l.file, stamp: l.stamp, resolved: l.resolved, blocks: l.body.length / INDEX_ENTRY })),
  });
  const file = localIndexFile(home);
  await ensureDir(path.dirname(file), 0o700);
  // Every block hash of every reusable layer: 0600, as the layers and their maps. A cache: a failed
  // write costs the next scan its reads, nothing else.
  await writeFileAtomic(file, Buffer.concat([Buffer.from(`${head}\n`), ...layers.map((l) => l.body)]), 0o600).catch(() => undefined);
}

// ---- local blocks -----------------------------------------------------------------------------------

/** Layer maps read at once by LocalBlocks.scan. */
const SCAN_CONCURRENCY = 8;

interface Where {
  file: string;
  offset: number;
  length: number;
  /** A root layer's map may hold its base image's data: read it through the whole chain. */
  resolved: boolean;
}

/**
 * The blocks of the sealed snapshot layers a pull may copy locally instead of fetching, by SHA-256:
 * only those of snapshots `usable` admits (sync.ts: published to this team, or pulled from it). Reusing
 * a block of an unshared VM would tell the member who shares a chain of candidate blocks which of them
 * exist here (it sees which ones are not requested). Reading goes through the layer's chain (a layer's
 * own data clusters are its top).
 */
export class LocalBlocks {
  private readonly where = new Map<string, Where>();
  private readonly chains = new Map<string, Chain>();
  /** What the index holds (scan), plus the layers a pull added: written again at close when it grew. */
  private indexed: IndexedLayer[] = [];
  private indexGrew = false;
  private home: Home | null = null;

  static async scan(home: Home, usable: (vm: string, snap: SnapshotRecord) => boolean, log?: (line: string) => void): Promise<LocalBlocks> {
    const lb = new LocalBlocks();
    lb.home = home;
    const layers: { snap: SnapshotRecord; file: string }[] = [];
    for (const vm of await listVmNames(home)) {
      let snaps: Awaited<ReturnType<typeof listSnapshotRecords>>;
      try {
        snaps = await listSnapshotRecords(home, vm);
      } catch {
        continue;
      }
      for (const s of snaps) if (s.state === 'ready' && usable(vm, s)) for (const d of s.disks) layers.push({ snap: s, file: d.path });
    }
    // The index of the last scan gives every layer whose stamp is unchanged: one file read for the
    // whole history, where a cached map per layer was one open and read each (0.41 s of a receiver's
    // incremental sync at 1,004 layers). Only new or changed layers are read, several at once (each
    // is a stat and a small read, mostly waiting), added in order so that the first layer holding a
    // block names it.
    const index = await readLocalIndex(home);
    const done: (IndexedLayer | null | undefined)[] = new Array(layers.length);
    let changed = false;
    let next = 0;
    let added = 0;
    const lane = async () => {
      while (next < layers.length) {
        const i = next++;
        const { snap, file } = layers[i]!;
        try {
          const stamp = await stampOf(file);
          const resolved = await isResolvedLayer(snap, file);
          const hit = index.get(file);
          if (hit && hit.stamp === stamp && hit.resolved === resolved) done[i] = hit;
          else {
            changed = true;
            done[i] = { file, stamp, resolved, body: blocksBody(await cachedLayerMap(home, file, resolved)) };
          }
        } catch (err) {
          log?.(`cannot index layer ${file}: ${(err as Error).message}`);
          done[i] = null;
        }
        for (; added < layers.length && done[added] !== undefined; added++) {
          const d = done[added];
          if (d) lb.addBody(d.file, d.body, d.resolved);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(SCAN_CONCURRENCY, layers.length) }, lane));
    lb.indexed = done.filter((d): d is IndexedLayer => !!d);
    if (changed || lb.indexed.length !== index.size) await writeLocalIndex(home, lb.indexed);
    return lb;
  }

  private addBody(file: string, body: Buffer, resolved: boolean): void {
    for (let at = 0; at < body.length; at += INDEX_ENTRY) {
      const hex = body.toString('hex', at, at + 32);
      if (!this.where.has(hex)) this.where.set(hex, { file, offset: body.readDoubleBE(at + 32), length: body.readDoubleBE(at + 40), resolved });
    }
  }

  /**
   * A layer a pull just wrote from its verified map `m` (never a resolved root: a pulled root has no
   * base): its blocks are reusable at once, and the index written at close() holds it, so the next
   * sync does not open its map either.
   */
  async addPulled(file: string, m: LayerMap): Promise<void> {
    this.addMap(file, m);
    try {
      this.indexed.push({ file, stamp: await stampOf(file), resolved: false, body: blocksBody(m) });
      this.indexGrew = true;
    } catch {
      // Not indexed: the next scan reads its cached map.
    }
  }

  private addMap(file: string, m: LayerMap, resolved = false): void {
    for (const it of m.items) {
      if (it.kind !== 'block') continue;
      const hex = it.sha.toString('hex');
      if (!this.where.has(hex)) this.where.set(hex, { file, offset: it.offset, length: it.length, resolved });
    }
  }

  has(sha: Buffer): boolean {
    return this.where.has(sha.toString('hex'));
  }

  get size(): number {
    return this.where.size;
  }

  /** The block's bytes, checked against its hash (null when it is gone or changed). */
  async read(sha: Buffer): Promise<Buffer | null> {
    const w = this.where.get(sha.toString('hex'));
    if (!w) return null;
    try {
      let ch = this.chains.get(w.file);
      if (!ch) {
        // The layer's own clusters hold its map's blocks (a root's may be its base's): not its history.
        ch = w.resolved ? await Chain.open(w.file) : await Chain.openOwn(w.file);
        this.chains.set(w.file, ch);
      }
      const data = await ch.read(w.offset, w.length);
      if (!createHash('sha256').update(data).digest().equals(sha)) return null;
      return data;
    } catch {
      return null;
    }
  }

  async close(): Promise<void> {
    for (const ch of this.chains.values()) await ch.close();
    this.chains.clear();
    if (this.indexGrew && this.home) await writeLocalIndex(this.home, this.indexed);
    this.indexGrew = false;
  }
}
