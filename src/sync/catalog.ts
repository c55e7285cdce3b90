/**
 * The catalog: one append-only Hypercore per workstation and team, written only by that workstation,
 * so every entry is signed by its author. Records are in catalog-records.ts.
 *
 *   key pair  Ed25519 from the seed HMAC-SHA256(identity seed, "clonebox/v1/catalog" || team topic):
 *             it survives a lost core directory, and one workstation's catalogs in two teams are
 *             unrelated (a teammate in one team learns nothing of what is shared with another).
 *   storage   <home>/sync/<team>/catalog/         our own core
 *             <home>/sync/<team>/peers/<key hex>/  teammates' cores, replicated in full
 *             <home>/sync/<team>/views/<key hex>   the view's cache of each (see Catalog.view)
 *
 * A core is a RocksDB store that one process opens at a time: `snapshot share` appends when it can
 * open ours, and `sync` (which holds it while it runs) appends what is still missing (share.ts).
 */
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import Hypercore from 'hypercore';
import { CloneboxError } from '../errors.js';
import { ensureDir, ensurePrivateDir, writeFileAtomic } from '../fsutil.js';
import type { Home } from '../store/home.js';
import {
  type CatalogRecord,
  decodeRecord,
  encodeRecord,
  type GroupRecordEntry,
  type HeadRecord,
  type MapItem,
  RecordKind,
  type SnapshotRecordEntry,
} from './catalog-records.js';
import { type Identity, type KeyPair, publicKeyOfSeed } from './identity.js';
import { teamTopic } from './keys.js';
import { catalogOverLimit } from './limits.js';
import { type TeamRecord, teamSecret } from './teams.js';

/** This workstation's catalog key pair for `team` (see the module comment). */
export function catalogKeyPair(identity: Identity, team: TeamRecord): KeyPair {
  const seed = createHmac('sha256', identity.secretKey.subarray(0, 32))
    .update('clonebox/v1/catalog', 'utf8')
    .update(teamTopic(teamSecret(team)))
    .digest();
  const publicKey = publicKeyOfSeed(seed);
  return { publicKey, secretKey: Buffer.concat([seed, publicKey]) };
}

/** The key of the catalog core written by `signer` (Hypercore's key is a hash of the signer key). */
export function catalogKeyOf(signer: Buffer): Buffer {
  return Hypercore.key(signer);
}

export function syncDir(home: Home, team: string): string {
  return path.join(home.root, 'sync', team);
}

function viewCacheFile(home: Home, team: string, key: Buffer): string {
  return path.join(syncDir(home, team), 'views', key.toString('hex'));
}

/** A snapshot as the catalog says it is, with the catalog's index of its record. */
export interface CatalogSnapshot extends SnapshotRecordEntry {
  index: number;
  id: string; // content id, hex
}

/** What a catalog says, folded: shares in force, every snapshot record, the heads, the group snapshots. */
export interface CatalogView {
  length: number;
  shares: Map<string, { upto: string | null }>;
  /** vm -> its snapshot records, in catalog order. */
  snapshots: Map<string, CatalogSnapshot[]>;
  heads: Map<string, Buffer | null>;
  /** group -> its group snapshot records, in catalog order. */
  groups: Map<string, GroupRecordEntry[]>;
}

/** An entry of a catalog that is not a Map record, as stored: what Catalog.view folds. */
interface FoldEntry {
  index: number;
  buf: Buffer;
}

const VIEW_CACHE_FORMAT = 1;
/** Hypercore's own limit on a block: a cached entry claiming more is not one we wrote. */
const MAX_ENTRY_BYTES = 16 * 1024 * 1024;

export class Catalog {
  private constructor(
    readonly core: Hypercore,
    readonly writable: boolean,
    /** Where view() caches the catalog's non-Map entries (null: no cache). */
    private readonly viewFile: string | null,
  ) {}

  static async openOwn(home: Home, team: TeamRecord, identity: Identity): Promise<Catalog> {
    const dir = path.join(syncDir(home, team.team), 'catalog');
    await ensureDir(path.dirname(dir));
    // The storage holds the catalog's signing seed (a RocksDB file the library creates 0644).
    await ensurePrivateDir(dir);
    const core = new Hypercore(dir, { keyPair: catalogKeyPair(identity, team) });
    try {
      await core.ready();
    } catch (err) {
      await core.close().catch(() => undefined);
      if (/lock/i.test((err as Error).message)) {
        throw new CloneboxError('SYNC_BUSY', `the catalog is in use by another clonebox process (a running sync?), ${dir}`, { cause: err });
      }
      throw new CloneboxError('IO', `cannot open the catalog (${(err as Error).message}), ${dir}`, { cause: err });
    }
    return new Catalog(core, true, viewCacheFile(home, team.team, core.key!));
  }

  static async openPeer(home: Home, team: string, key: Buffer): Promise<Catalog> {
    const dir = path.join(syncDir(home, team), 'peers', key.toString('hex'));
    await ensureDir(path.dirname(dir));
    await ensurePrivateDir(dir);
    const core = new Hypercore(dir, key);
    await core.ready();
    return new Catalog(core, false, viewCacheFile(home, team, key));
  }

  get key(): Buffer {
    return this.core.key!;
  }

  get length(): number {
    return this.core.length;
  }

  async append(records: CatalogRecord[]): Promise<number> {
    if (!records.length) return this.core.length;
    const { length } = await this.core.append(records.map(encodeRecord));
    return length - records.length;
  }

  async get(index: number): Promise<CatalogRecord> {
    const buf = await this.core.get(index, { timeout: 30_000 });
    if (!buf) throw new CloneboxError('SYNC_CATALOG', `catalog entry ${index} is not available, catalog ${this.key.toString('hex').slice(0, 8)}`);
    return decodeRecord(buf);
  }

  /** The map items of entries [start, start+count), which must all be Map records of this vm/target. */
  async mapItems(start: number, count: number, vm: string, target: string): Promise<MapItem[]> {
    const out: MapItem[] = [];
    for (let i = start; i < start + count; i++) {
      const r = await this.get(i);
      if (r.kind !== 'map' || r.vm !== vm || r.target !== target) {
        throw new CloneboxError('SYNC_CATALOG', `catalog entry ${i} is not a map of ${vm}/${target}, catalog ${this.key.toString('hex').slice(0, 8)}`);
      }
      for (const it of r.items) out.push(it);
    }
    return out;
  }

  /** Why this (teammate's) catalog is beyond the per-member limits (limits.ts), or null. */
  overLimit(): string | null {
    return catalogOverLimit(this.core.length, this.core.byteLength);
  }

  /**
   * Folds entries [0, length) (Map entries are only peeked at, never decoded). Each Map entry belongs
   * to exactly one Snapshot record: the ranges a Snapshot names lie after the previous Snapshot's and
   * before its own entry, as publishing appends them. Otherwise a small catalog of many Snapshot
   * records pointing at one large Map entry would make a puller hold that entry's items once per
   * record (a heap exhaustion from a ~1 MB catalog).
   *
   * The entries that are not Map records are cached (views/<key hex>) with the length and Merkle tree
   * hash they were read at: while the catalog's tree at that length still has that hash (the same
   * entries: a fork or a truncation changes it), only the entries after it are read from the core.
   * Every cached entry is decoded and folded again, with the same checks: the cache saves a sync the
   * read of every entry of a long history (two per snapshot), not its verification.
   */
  async view(): Promise<CatalogView> {
    const length = this.core.length;
    const cached = await this.readViewCache(length);
    const entries = cached?.entries ?? [];
    for (let i = cached?.length ?? 0; i < length; i++) {
      const buf = await this.core.get(i, { timeout: 30_000 });
      if (!buf) throw new CloneboxError('SYNC_CATALOG', `catalog entry ${i} is not available`);
      if (buf[1] !== RecordKind.Map) entries.push({ index: i, buf });
    }
    const v = this.fold(entries, length);
    if (cached?.length !== length) await this.writeViewCache(length, entries);
    return v;
  }

  private fold(entries: FoldEntry[], length: number): CatalogView {
    const v: CatalogView = { length, shares: new Map(), snapshots: new Map(), heads: new Map(), groups: new Map() };
    let claimed = 0; // entries before this index belong to a Snapshot record already
    for (const { index: i, buf } of entries) {
      const r = decodeRecord(buf);
      if (r.kind === 'share') v.shares.set(r.vm, { upto: r.upto });
      else if (r.kind === 'unshare') v.shares.delete(r.vm);
      else if (r.kind === 'head') v.heads.set(r.vm, (r as HeadRecord).content_id);
      else if (r.kind === 'group') {
        const list = v.groups.get(r.group) ?? [];
        list.push(r);
        v.groups.set(r.group, list);
      } else if (r.kind === 'snapshot') {
        for (const d of r.disks) {
          if (d.map_start < claimed || d.map_start + d.map_count > i) {
            throw new CloneboxError(
              'SYNC_CATALOG',
              `catalog entry ${i} (snapshot ${r.vm}/${r.name}) points at map entries ${d.map_start}..${d.map_start + d.map_count - 1}, which are not its own, catalog ${this.key.toString('hex').slice(0, 8)}`,
            );
          }
          claimed = d.map_start + d.map_count;
        }
        const list = v.snapshots.get(r.vm) ?? [];
        list.push({ ...r, index: i, id: r.content_id.toString('hex') });
        v.snapshots.set(r.vm, list);
      }
    }
    return v;
  }

  /**
   * The cached non-Map entries and the length they cover, or null when there is no cache, it is
   * damaged, or the catalog no longer holds those entries (another fork, a different tree hash).
   * Layout: a JSON line (format, key, fork, length, tree hash, entry count), then per entry its index
   * and byte length (uint32 big-endian each) and its bytes.
   */
  private async readViewCache(length: number): Promise<{ length: number; entries: FoldEntry[] } | null> {
    if (this.viewFile === null) return null;
    const buf = await readFile(this.viewFile).catch(() => null);
    if (!buf) return null;
    const nl = buf.indexOf(10);
    if (nl < 0) return null;
    try {
      const h = JSON.parse(buf.subarray(0, nl).toString()) as Record<string, unknown>;
      const n = h.entries;
      const len = h.length;
      if (h.format !== VIEW_CACHE_FORMAT || h.key !== this.key.toString('hex') || h.fork !== this.core.fork) return null;
      if (!Number.isSafeInteger(len) || (len as number) < 0 || (len as number) > length || !Number.isSafeInteger(n)) return null;
      if (typeof h.tree_hash !== 'string' || !(await this.treeHashHere(len as number))?.equals(Buffer.from(h.tree_hash, 'hex'))) return null;
      const entries: FoldEntry[] = [];
      let at = nl + 1;
      let last = -1;
      for (let k = 0; k < (n as number); k++) {
        if (at + 8 > buf.length) return null;
        const index = buf.readUInt32BE(at);
        const size = buf.readUInt32BE(at + 4);
        at += 8;
        if (index <= last || index >= (len as number) || size > MAX_ENTRY_BYTES || at + size > buf.length) return null;
        entries.push({ index, buf: buf.subarray(at, at + size) });
        last = index;
        at += size;
      }
      return at === buf.length ? { length: len as number, entries } : null;
    } catch {
      return null;
    }
  }

  /**
   * The tree hash at `length` when entry length-1 is stored here (null otherwise, or on an error):
   * Hypercore's treeHash would wait for a peer to send that entry.
   */
  private async treeHashHere(length: number): Promise<Buffer | null> {
    try {
      if (length > 0 && !(await this.core.has(length - 1))) return null;
      return await this.core.treeHash(length);
    } catch {
      return null;
    }
  }

  private async writeViewCache(length: number, entries: FoldEntry[]): Promise<void> {
    if (this.viewFile === null) return;
    const hash = await this.treeHashHere(length);
    if (hash === null) return;
    const head = JSON.stringify({
      format: VIEW_CACHE_FORMAT,
      key: this.key.toString('hex'),
      fork: this.core.fork,
      length,
      tree_hash: hash.toString('hex'),
      entries: entries.length,
    });
    const parts: Buffer[] = [Buffer.from(`${head}\n`)];
    for (const e of entries) {
      const pre = Buffer.alloc(8);
      pre.writeUInt32BE(e.index, 0);
      pre.writeUInt32BE(e.buf.length, 4);
      parts.push(pre, e.buf);
    }
    // A cache: when it cannot be written, the next view reads the catalog again.
    await ensurePrivateDir(path.dirname(this.viewFile))
      .then(() => writeFileAtomic(this.viewFile!, Buffer.concat(parts), 0o600))
      .catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.core.close().catch(() => undefined);
  }
}
