/**
 * Snapshot identity by content, like a commit id:
 *
 *   content_id = hex SHA-256( "clonebox-snapshot-v1\n" || parent's content id (32 bytes; zeros for a
 *                root) || u32 disk count || per disk, by target name: u8 name length, name, layer digest )
 *
 * The layer digest (src/content/digest.ts, LayerDigest) covers the layer's map and the SHA-256 of every
 * block of its data. For a root snapshot whose layer stands on an external base image, the layer means
 * the whole resolved disk (what a bundle carries for it), so the id does not depend on where the base
 * lives. Ids are computed once and then stored in the snapshot record (`content_id`): they name a state
 * and stay valid when a later merge rewrites the layer that holds it. Bundles and team sync find a
 * common base by these ids.
 */
import { createHash } from 'node:crypto';
import { Batcher } from '../content/batcher.js';
import { FRAME_TARGET } from '../content/codec.js';
import { BLOCK_SIZE, LayerDigest } from '../content/digest.js';
import { openLayer } from '../content/layer.js';
import { CloneboxError } from '../errors.js';
import { Qcow2Image } from '../qcow2/reader.js';
import type { Home } from '../store/home.js';
import { type SnapshotRecord, saveSnapshotRecord } from '../store/snapshots.js';

interface LayerSummary {
  digest: Buffer;
  dataBytes: number;
  zeroBytes: number;
  blocks: number;
}

/** The content id of a snapshot from its parent's id and its layers' digests. */
export function contentId(parentId: string | null, disks: { target: string; digest: Buffer }[]): string {
  const h = createHash('sha256');
  h.update('clonebox-snapshot-v1\n', 'latin1');
  h.update(parentId === null ? Buffer.alloc(32) : Buffer.from(parentId, 'hex'));
  const n = Buffer.alloc(4);
  n.writeUInt32BE(disks.length);
  h.update(n);
  for (const d of [...disks].sort((a, b) => (a.target < b.target ? -1 : a.target > b.target ? 1 : 0))) {
    const t = Buffer.from(d.target, 'latin1');
    h.update(Buffer.from([t.length]));
    h.update(t);
    h.update(d.digest);
  }
  return h.digest('hex');
}

/**
 * The content id a record may be matched by (a `--since` base, a sync chain's base), or null: an id
 * that could not be derived from layers (`content_id_unverified`) names a state someone claimed, not
 * one we can vouch for, so nothing may be placed on top of it by id.
 */
export function trustedContentId(rec: SnapshotRecord): string | null {
  return rec.content_id && !rec.content_id_unverified ? rec.content_id : null;
}

/** Whether a snapshot's layer must be read through its backing chain (a root on an external base). */
export async function isResolvedLayer(rec: SnapshotRecord, layerPath: string): Promise<boolean> {
  if (rec.parent !== null) return false;
  const img = await Qcow2Image.open(layerPath);
  try {
    return img.backingFile !== null;
  } finally {
    await img.close();
  }
}

/**
 * Batch buffers of finished digests, for the next layer: an id over a long history reads hundreds of
 * small layers, and a fresh 2 MiB buffer for each made the garbage collector a large share of the
 * time (bench/README.md, "history").
 */
const spareBuffers: Buffer[] = [];
const SPARE_MAX = 4;
/** Layers read at once: small layers cost mostly open/read/close latency, which overlaps. */
const DIGEST_CONCURRENCY = 4;
/** Records written at once (each fsynced: the file system commits them together). */
const SAVE_CONCURRENCY = 16;

/** Reads a whole layer and returns its digest. Memory: one batch of about 2 MiB. */
async function layerDigest(file: string, resolved: boolean): Promise<LayerSummary> {
  const buf = spareBuffers.pop() ?? Buffer.allocUnsafe(FRAME_TARGET + BLOCK_SIZE);
  const src = await openLayer(file, resolved).catch((err: unknown) => {
    spareBuffers.push(buf);
    throw err;
  });
  try {
    const dg = new LayerDigest(src.virtualSize, src.clusterSize);
    const batcher = new Batcher(
      0,
      FRAME_TARGET,
      async (b) => {
        for (const it of b.items) {
          if (it.kind === 'zero') dg.addZero(it.offset, it.length);
          else
            dg.addBlock(
              it.offset,
              it.length,
              createHash('sha256')
                .update(b.buf.subarray(it.at, it.at + it.length))
                .digest(),
            );
        }
        return undefined; // the buffer is free again once hashed
      },
      () => buf,
    );
    for await (const p of src.pieces()) {
      if (p.kind === 'zero') await batcher.zero(p.offset, p.length);
      else await batcher.data(p.offset, p.length, p.fill);
    }
    await batcher.flush();
    return { digest: dg.digest(), dataBytes: dg.dataBytes, zeroBytes: dg.zeroBytes, blocks: dg.blocks };
  } finally {
    await src.close();
    if (spareBuffers.length < SPARE_MAX) spareBuffers.push(buf);
  }
}

/** `fn` over `items`, at most `limit` at a time; results in the items' order. */
async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return out;
}

/**
 * Makes sure the named snapshots (default: all) and their ancestors have a content id: computes the
 * missing ones, sets `content_id` on the records passed in (so later writes of those objects keep it)
 * and saves them. The caller holds the VM lock. Call it before rewriting any layer (a merge): the ids
 * of the states that exist now must be computed from their layers as they are now. Returns name →
 * content id for the named snapshots.
 *
 * An id stands on its parent's, so a snapshot without one costs a read of every layer back to the
 * nearest ancestor that has one (once: the ids are kept). The layer digests are independent of each
 * other and are read several at once; only the chaining goes root first.
 */
export async function ensureContentIds(home: Home, snaps: SnapshotRecord[], names?: string[]): Promise<Map<string, string>> {
  const byName = new Map(snaps.map((s) => [s.name, s]));
  const notFound = (name: string) => new CloneboxError('SNAPSHOT_NOT_FOUND', `no such snapshot ${name}`);
  // The snapshots without an id, parents before children.
  const todo: SnapshotRecord[] = [];
  const queued = new Set<string>();
  for (const name of names ?? snaps.map((s) => s.name)) {
    const line: SnapshotRecord[] = [];
    for (let cur: string | null = name; cur !== null && !queued.has(cur); ) {
      const rec = byName.get(cur);
      if (!rec) throw notFound(cur);
      if (rec.content_id) break;
      if (line.length >= snaps.length) throw new CloneboxError('STORE_CORRUPT', `snapshot parents form a loop at ${name}, VM ${rec.vm_name}`);
      line.push(rec);
      cur = rec.parent;
    }
    for (const r of line.reverse()) {
      todo.push(r);
      queued.add(r.name);
    }
  }
  const digests = await mapLimit(todo, DIGEST_CONCURRENCY, async (rec) => {
    const disks: { target: string; digest: Buffer }[] = [];
    for (const d of rec.disks) {
      const resolved = await isResolvedLayer(rec, d.path);
      disks.push({ target: d.target, digest: (await layerDigest(d.path, resolved)).digest });
    }
    return disks;
  });
  for (const [i, rec] of todo.entries()) {
    const parent = rec.parent === null ? null : byName.get(rec.parent);
    if (parent === undefined) throw notFound(rec.parent!);
    rec.content_id = contentId(parent === null ? null : parent.content_id!, digests[i]!);
    // An id standing on an unverified one is no better than its base.
    if (parent?.content_id_unverified) rec.content_id_unverified = true;
  }
  await mapLimit(todo, SAVE_CONCURRENCY, (rec) => saveSnapshotRecord(home, rec));
  const out = new Map<string, string>();
  for (const name of names ?? snaps.map((s) => s.name)) out.set(name, byName.get(name)!.content_id!);
  return out;
}
