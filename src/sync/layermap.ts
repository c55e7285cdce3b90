/**
 * Layer maps for sync: a layer's normalised map (src/content/layer.ts) as zero extents and 64 KiB
 * blocks named by SHA-256, plus its layer digest. The sharer publishes them in its catalog; the
 * receiver uses them to find blocks it already has in any local layer (other VMs, earlier pulls).
 *
 * Maps of local layers are cached under <home>/sync/maps/ keyed by the layer's path and stamped with
 * its size, mtime and inode, so a layer is read once, not at every sync.
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

  static async scan(home: Home, usable: (vm: string, snap: SnapshotRecord) => boolean, log?: (line: string) => void): Promise<LocalBlocks> {
    const lb = new LocalBlocks();
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
    // One cached map per layer of the whole history: several read at once (each is a stat and a
    // small read, mostly waiting), added in order so that the first layer holding a block names it.
    const done: ({ map: LayerMap; resolved: boolean } | null | undefined)[] = new Array(layers.length);
    let next = 0;
    let added = 0;
    const lane = async () => {
      while (next < layers.length) {
        const i = next++;
        const { snap, file } = layers[i]!;
        try {
          const resolved = await isResolvedLayer(snap, file);
          done[i] = { map: await cachedLayerMap(home, file, resolved), resolved };
        } catch (err) {
          log?.(`cannot index layer ${file}: ${(err as Error).message}`);
          done[i] = null;
        }
        // Maps are dropped once added: memory stays at a few maps, not the whole history's.
        for (; added < layers.length && done[added] !== undefined; added++) {
          const d = done[added];
          if (d) lb.addMap(layers[added]!.file, d.map, d.resolved);
          done[added] = null;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(SCAN_CONCURRENCY, layers.length) }, lane));
    return lb;
  }

  addMap(file: string, m: LayerMap, resolved = false): void {
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
  }
}
