/**
 * Where a pull placed the blocks it fetched. Each fetched block is written once, into the temporary
 * layer that needs it (pull.ts), and read back from that layer when it is needed again; this index is
 * what lets an interrupted pull keep those blocks:
 *
 *   <home>/sync/partial/placed.idx   64-byte entries, appended:
 *     0  32  SHA-256 of the block
 *    32  16  the first 16 bytes of SHA-256 of the layer's path, exactly as pull-temps.list names it
 *    48   8  u64 BE: where the block's bytes lie in that file (host offset; the qcow2 writer stores
 *            data clusters raw, never compressed, so a block's bytes are contiguous there)
 *    56   4  u32 BE: the block's length
 *    60   4  the first 4 bytes of SHA-256 of bytes 0..60 (an entry that does not match is skipped)
 *
 * An entry is appended only after the bytes it names were fsynced: the layers are synced in batches
 * (about every 16 MiB of placed data; the layer being written by one datasync of what it handed to the
 * kernel), then their entries appended together. The index itself is not fsynced: an entry lost with
 * the page cache costs a refetch, never a wrong block.
 *
 * Salvage moves placed blocks into the spool (spool.ts), so the next sync reuses them once the
 * temporaries are gone: a pull that fails does it before it removes its layers; after a SIGKILL the
 * next sync (under the sync lock) does it from this index before it removes what pull-temps.list
 * names. Nothing read from the index is trusted: an entry naming a file that list does not name is
 * skipped, its offset and length are bounded by the file's size and BLOCK_SIZE before a byte is read,
 * a torn last entry is ignored, and every block is hashed again before it enters the spool.
 */
import { createHash } from 'node:crypto';
import { type FileHandle, open, rm } from 'node:fs/promises';
import path from 'node:path';
import { BLOCK_SIZE } from '../content/digest.js';
import { crashPoint } from '../crash.js';
import { ioError } from '../errors.js';
import { syncFiles } from '../fsutil.js';
import { BlockingReads, preadSync } from '../qcow2/blocking-reads.js';
import type { Qcow2Writer } from '../qcow2/writer.js';
import type { Home } from '../store/home.js';
import { Spool } from './spool.js';

export const PLACED_ENTRY = 64;
/** Placed bytes between two syncs of the layers (and appends to the index). */
const SYNC_BYTES = 16 * 1024 * 1024;
/** Read handles kept open on layers while blocks are read back. */
const MAX_HANDLES = 8;
/** Entries read from the index at a time when salvaging. */
const READ_ENTRIES = 1024;

interface Spot {
  file: string;
  host: number;
  length: number;
}

export function placedIndexPath(home: Home): string {
  return path.join(Spool.dirOf(home), 'placed.idx');
}

/** The 16 bytes that name a layer's path in an entry. */
export function pathTag(file: string): Buffer {
  return createHash('sha256').update(file, 'utf8').digest().subarray(0, 16);
}

export function encodeEntry(sha: Buffer, file: string, host: number, length: number): Buffer {
  const e = Buffer.alloc(PLACED_ENTRY);
  sha.copy(e, 0, 0, 32);
  pathTag(file).copy(e, 32);
  e.writeBigUInt64BE(BigInt(host), 48);
  e.writeUInt32BE(length, 56);
  createHash('sha256').update(e.subarray(0, 60)).digest().copy(e, 60, 0, 4);
  return e;
}

/** An entry's fields, or null when its check bytes do not match. */
export function decodeEntry(e: Buffer): { sha: Buffer; tag: string; host: number; length: number } | null {
  if (e.length !== PLACED_ENTRY) return null;
  if (!createHash('sha256').update(e.subarray(0, 60)).digest().subarray(0, 4).equals(e.subarray(60, 64))) return null;
  const host = e.readBigUInt64BE(48);
  if (host > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  return { sha: Buffer.from(e.subarray(0, 32)), tag: e.subarray(32, 48).toString('hex'), host: Number(host), length: e.readUInt32BE(56) };
}

/** Up to MAX_HANDLES files open for reading, least recently used closed first. */
class ReadHandles {
  private readonly open = new Map<string, { fh: FileHandle; size: number } | null>();
  private readonly blocking = new BlockingReads(BLOCK_SIZE);

  /** `length` bytes at `host` of `file`, or null when the file is missing or the range is not in it. */
  async read(file: string, host: number, length: number): Promise<Buffer | null> {
    if (!Number.isSafeInteger(host) || host < 0 || length <= 0 || length > BLOCK_SIZE) return null;
    let h = this.open.get(file);
    if (h === undefined) {
      if (this.open.size >= MAX_HANDLES) {
        const [oldest, oh] = this.open.entries().next().value!;
        this.open.delete(oldest);
        await oh?.fh.close().catch(() => undefined);
      }
      h = await open(file, 'r').then(
        async (fh) => ({ fh, size: (await fh.stat()).size }),
        () => null,
      );
    } else this.open.delete(file);
    this.open.set(file, h);
    if (!h || host + length > h.size) return null;
    const buf = Buffer.allocUnsafe(length);
    // The layer was written moments ago: from the page cache a blocking pread is a copy, a thread-pool
    // read a round trip per block, paid by the writer of the next layer (blocking-reads.ts).
    if (this.blocking.wants(length)) {
      this.blocking.run(() => preadSync(h.fh.fd, buf, host, file));
      return buf;
    }
    let got = 0;
    while (got < length) {
      const { bytesRead } = await h.fh.read(buf, got, length - got, host + got);
      if (bytesRead === 0) return null;
      got += bytesRead;
    }
    return buf;
  }

  async close(): Promise<void> {
    for (const h of this.open.values()) await h?.fh.close().catch(() => undefined);
    this.open.clear();
  }
}

function verified(sha: Buffer, data: Buffer | null): Buffer | null {
  return data && createHash('sha256').update(data).digest().equals(sha) ? data : null;
}

/** The placements of one pull (see the module comment). */
export class Placements {
  private readonly where = new Map<string, Spot>();
  /** Placed, not yet in the index. */
  private pending: { sha: Buffer; spot: Spot }[] = [];
  private pendingBytes = 0;
  private current: { file: string; writer: Qcow2Writer } | null = null;
  private readonly handles = new ReadHandles();
  /** Syncs and index appends, in order. */
  private chain: Promise<void> = Promise.resolve();

  private constructor(private readonly idx: FileHandle) {}

  /** Starts the index of a new pull (an earlier pull's blocks were salvaged or registered). */
  static async begin(home: Home): Promise<Placements> {
    const file = placedIndexPath(home);
    try {
      return new Placements(await open(file, 'w', 0o600));
    } catch (err) {
      throw ioError(err, 'cannot open the index of placed blocks', file);
    }
  }

  get size(): number {
    return this.where.size;
  }

  has(sha: Buffer): boolean {
    return this.where.has(sha.toString('hex'));
  }

  /** `writer` now writes `file` (blocks placed from here on lie in it). */
  writing(file: string, writer: Qcow2Writer): void {
    this.current = { file, writer };
  }

  /** The writer of `file` finished or stopped: its blocks are read from the file from here on. */
  done(file: string): void {
    if (this.current?.file === file) this.current = null;
  }

  /** A verified block went to `host` of the file being written. */
  placed(sha: Buffer, host: number, length: number): void {
    const hex = sha.toString('hex');
    if (!this.current || this.where.has(hex)) return;
    const spot = { file: this.current.file, host, length };
    this.where.set(hex, spot);
    this.pending.push({ sha, spot });
    this.pendingBytes += length;
    crashPoint('sync-block-placed');
    if (this.pendingBytes >= SYNC_BYTES) this.checkpoint(false);
  }

  /**
   * Syncs the layers of the pending blocks (`synced`: the caller did) and appends their entries;
   * runs beside the writes. A block still in the writer's batch waits for the next checkpoint.
   */
  private checkpoint(synced: boolean): void {
    const entries = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    if (!entries.length) return;
    const cur = this.current;
    const curSync = cur && !synced ? cur.writer.syncFlushed() : null;
    const files = synced ? [] : [...new Set(entries.map((e) => e.spot.file))].filter((f) => f !== cur?.file);
    const step = async () => {
      const [end] = await Promise.all([curSync, files.length ? syncFiles(files) : null]);
      crashPoint('sync-layer-synced');
      const out: Buffer[] = [];
      for (const e of entries) {
        if (curSync !== null && e.spot.file === cur!.file && e.spot.host + e.spot.length > end!) {
          this.pending.push(e); // not handed to the kernel when the sync started
          this.pendingBytes += e.spot.length;
        } else out.push(encodeEntry(e.sha, e.spot.file, e.spot.host, e.spot.length));
      }
      if (!out.length) return;
      const buf = Buffer.concat(out);
      let done = 0;
      while (done < buf.length) done += (await this.idx.write(buf, done, buf.length - done)).bytesWritten;
      crashPoint('sync-placed-appended');
    };
    // A failed sync or append costs only resume (the blocks are fetched again); the layers' own sync
    // before the commit reports a failing disk.
    this.chain = this.chain.then(step).catch(() => undefined);
  }

  /** Every layer was synced by the caller: indexes every placed block, and waits for the index. */
  async settle(): Promise<void> {
    // A checkpoint still running puts back the blocks its sync did not cover: wait for it first, so
    // that this last one indexes those too.
    await this.chain;
    this.checkpoint(true);
    await this.chain;
  }

  /** A placed block read back from its layer and hashed again; null when it is not (or no longer) there. */
  async read(sha: Buffer): Promise<Buffer | null> {
    const spot = this.where.get(sha.toString('hex'));
    if (!spot) return null;
    if (this.current?.file === spot.file) return verified(sha, await this.current.writer.readBack(spot.host, spot.length));
    return verified(sha, await this.handles.read(spot.file, spot.host, spot.length));
  }

  /**
   * A failed pull, before it removes its layers: copies every placed block into the spool (flushed),
   * so the next sync does not fetch it again. Returns how many went. The writers must be stopped.
   */
  async salvageTo(spool: Spool): Promise<number> {
    await this.chain;
    this.current = null;
    let n = 0;
    for (const [hex, spot] of this.where) {
      const sha = Buffer.from(hex, 'hex');
      if (spool.has(sha)) continue;
      const data = verified(sha, await this.handles.read(spot.file, spot.host, spot.length).catch(() => null));
      if (!data) continue;
      await spool.append(sha, data);
      n++;
    }
    await spool.flush();
    crashPoint('sync-salvage');
    return n;
  }

  async close(): Promise<void> {
    await this.chain;
    await this.handles.close();
    await this.idx.close().catch(() => undefined);
  }
}

/**
 * After a killed pull, under the sync lock and before `listed` (the files pull-temps.list names) are
 * removed: copies the blocks placed.idx names in them into the spool, each checked against its hash,
 * then removes the index. Returns how many blocks were salvaged.
 */
export async function salvageKilled(home: Home, spool: Spool, listed: string[]): Promise<number> {
  const file = placedIndexPath(home);
  let idx: FileHandle;
  try {
    idx = await open(file, 'r');
  } catch {
    return 0;
  }
  const byTag = new Map(listed.map((f) => [pathTag(f).toString('hex'), f]));
  const handles = new ReadHandles();
  let n = 0;
  try {
    const size = (await idx.stat()).size;
    const whole = Math.floor(size / PLACED_ENTRY); // a torn last entry is ignored
    const buf = Buffer.alloc(READ_ENTRIES * PLACED_ENTRY);
    for (let at = 0; at < whole; at += READ_ENTRIES) {
      const count = Math.min(READ_ENTRIES, whole - at);
      let got = 0;
      while (got < count * PLACED_ENTRY) {
        const { bytesRead } = await idx.read(buf, got, count * PLACED_ENTRY - got, at * PLACED_ENTRY + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      for (let i = 0; i + PLACED_ENTRY <= got; i += PLACED_ENTRY) {
        const e = decodeEntry(buf.subarray(i, i + PLACED_ENTRY));
        if (!e) continue;
        const layer = byTag.get(e.tag);
        if (layer === undefined || spool.has(e.sha)) continue;
        const data = verified(e.sha, await handles.read(layer, e.host, e.length));
        if (!data) continue;
        await spool.append(e.sha, data);
        n++;
      }
    }
    await spool.flush();
  } finally {
    await handles.close();
    await idx.close().catch(() => undefined);
  }
  crashPoint('sync-salvage');
  await rm(file, { force: true });
  return n;
}
