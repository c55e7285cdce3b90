/**
 * The pull spool: <home>/sync/partial/, where verified blocks received from teammates wait when no
 * layer being written holds them: the blocks a failed or killed pull had placed in its layers
 * (salvaged, placed.ts), those that arrived and were not written yet when it failed, and the few a
 * layer cannot take as they are (pull.ts). It is what makes an interrupted pull resume without
 * fetching again:
 *
 *   blocks.dat   raw bytes of verified blocks, appended
 *   blocks.idx   one 44-byte entry per block: SHA-256 (32), u64 offset in blocks.dat, u32 length;
 *                appended only after the bytes it names were written and fsynced
 *
 * A torn last index entry (a crash while appending) is ignored; every block is hashed again when read
 * (a damaged spool costs a refetch, never a wrong layer). The spool is emptied once every chain pulled
 * by a sync was registered.
 */
import { createHash } from 'node:crypto';
import { type FileHandle, open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ioError } from '../errors.js';
import { ensureDir } from '../fsutil.js';
import type { Home } from '../store/home.js';

const ENTRY = 44;
/** Bytes of blocks written before the data is fsynced and their index entries appended. */
const FLUSH_BYTES = 8 * 1024 * 1024;
/** Blocks are gathered into writes of about this many bytes (one writev each). */
const WRITE_BYTES = 1024 * 1024;
/** append() makes its caller wait only when more than this is queued and not yet written. */
const MAX_UNWRITTEN = 32 * 1024 * 1024;

export class Spool {
  private readonly where = new Map<string, { offset: number; length: number }>();
  /** Index entries of blocks appended since the last flush. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Blocks appended and not yet handed to a write, from file offset `queueAt`. */
  private queue: Buffer[] = [];
  private queueBytes = 0;
  private queueAt = 0;
  /** Bytes handed to writes that have not completed. */
  private unwritten = 0;
  /** Every block below this offset is written (writes complete in file order, on `chain`). */
  private writtenTo = 0;
  /** Writes, fsyncs and index appends, in order. */
  private chain: Promise<void> = Promise.resolve();

  private constructor(
    readonly dir: string,
    private readonly data: FileHandle,
    private readonly idx: FileHandle,
    private end: number,
  ) {
    this.queueAt = end;
    this.writtenTo = end;
  }

  static dirOf(home: Home): string {
    return path.join(home.root, 'sync', 'partial');
  }

  static async open(home: Home): Promise<Spool> {
    const dir = Spool.dirOf(home);
    await ensureDir(dir, 0o700);
    const dataFile = path.join(dir, 'blocks.dat');
    const idxFile = path.join(dir, 'blocks.idx');
    let idxBuf: Buffer;
    try {
      idxBuf = await readFile(idxFile);
    } catch {
      idxBuf = Buffer.alloc(0);
    }
    const n = Math.floor(idxBuf.length / ENTRY);
    let end = 0;
    const entries: { hex: string; offset: number; length: number }[] = [];
    for (let i = 0; i < n; i++) {
      const at = i * ENTRY;
      const offset = Number(idxBuf.readBigUInt64BE(at + 32));
      const length = idxBuf.readUInt32BE(at + 40);
      entries.push({ hex: idxBuf.subarray(at, at + 32).toString('hex'), offset, length });
      end = Math.max(end, offset + length);
    }
    try {
      await (await open(dataFile, 'a', 0o600)).close();
      const data = await open(dataFile, 'r+');
      const size = (await data.stat()).size;
      // Data past the last indexed block was never vouched for: overwrite it.
      if (size < end) {
        // The index names bytes the data file lacks (a damaged spool): start over.
        await data.truncate(0);
        entries.length = 0;
        end = 0;
      } else if (size > end) await data.truncate(end);
      const idx = await open(idxFile, 'a', 0o600);
      if (idxBuf.length !== n * ENTRY || entries.length !== n) await idx.truncate(entries.length * ENTRY);
      const sp = new Spool(dir, data, idx, end);
      for (const e of entries) sp.where.set(e.hex, { offset: e.offset, length: e.length });
      return sp;
    } catch (err) {
      throw ioError(err, 'cannot open the pull spool', dir);
    }
  }

  get size(): number {
    return this.where.size;
  }

  has(sha: Buffer): boolean {
    return this.where.has(sha.toString('hex'));
  }

  /**
   * Appends a verified block: queued, written with its neighbours in writes of about 1 MiB, made
   * durable and indexed by `flush` (and every 8 MiB). The spool keeps `data` (not a copy) until it is
   * written: the caller must not reuse it. Resolves at once unless more than 32 MiB wait to be
   * written (then when the writes caught up), so a fetch does not wait for the disk block by block.
   */
  append(sha: Buffer, data: Buffer): Promise<void> {
    const hex = sha.toString('hex');
    if (this.where.has(hex)) return Promise.resolve();
    const offset = this.end;
    this.end += data.length;
    this.where.set(hex, { offset, length: data.length });
    const entry = Buffer.alloc(ENTRY);
    sha.copy(entry, 0);
    entry.writeBigUInt64BE(BigInt(offset), 32);
    entry.writeUInt32BE(data.length, 40);
    this.queue.push(data);
    this.queueBytes += data.length;
    this.pending.push(entry);
    this.pendingBytes += data.length;
    if (this.pendingBytes >= FLUSH_BYTES) void this.flush().catch(() => undefined);
    else if (this.queueBytes >= WRITE_BYTES) this.writeQueued();
    return this.unwritten > MAX_UNWRITTEN ? this.chain : Promise.resolve();
  }

  /** Hands the queued blocks to one write (appended to the chain). */
  private writeQueued(): void {
    if (!this.queue.length) return;
    const bufs = this.queue;
    const at = this.queueAt;
    const total = this.queueBytes;
    this.queue = [];
    this.queueBytes = 0;
    this.queueAt += total;
    this.unwritten += total;
    this.chain = this.chain.then(async () => {
      try {
        let done = (await this.data.writev(bufs, at)).bytesWritten;
        if (done < total) {
          const all = Buffer.concat(bufs); // a short write: the rest one piece at a time
          while (done < total) done += (await this.data.write(all, done, total - done, at + done)).bytesWritten;
        }
        this.writtenTo = at + total;
      } finally {
        this.unwritten -= total;
      }
    });
  }

  /** Makes every appended block durable, then indexes it. */
  async flush(): Promise<void> {
    this.writeQueued();
    const entries = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.chain = this.chain.then(async () => {
      if (!entries.length) return;
      await this.data.sync();
      const buf = Buffer.concat(entries);
      let done = 0;
      while (done < buf.length) {
        const { bytesWritten } = await this.idx.write(buf, done, buf.length - done);
        done += bytesWritten;
      }
    });
    return this.chain;
  }

  /** The block's bytes, checked against its hash (null when absent or damaged). */
  async read(sha: Buffer): Promise<Buffer | null> {
    const w = this.where.get(sha.toString('hex'));
    if (!w) return null;
    // A block written already is read at once: waiting for the chain would wait for the fsyncs and
    // index appends queued behind it (the layer writer reads blocks needed twice while blocks arrive).
    if (w.offset + w.length > this.writtenTo) {
      if (w.offset >= this.queueAt) this.writeQueued();
      await this.chain;
    }
    const buf = Buffer.allocUnsafe(w.length);
    let got = 0;
    while (got < w.length) {
      const { bytesRead } = await this.data.read(buf, got, w.length - got, w.offset + got);
      if (bytesRead === 0) return null;
      got += bytesRead;
    }
    if (!createHash('sha256').update(buf).digest().equals(sha)) return null;
    return buf;
  }

  async close(): Promise<void> {
    await this.flush().catch(() => undefined);
    await this.data.close().catch(() => undefined);
    await this.idx.close().catch(() => undefined);
  }

  /**
   * Closes and deletes the spool (every block in it is in a registered layer now), with the index of
   * placed blocks (placed.ts: every pull of the run committed or salvaged its own).
   */
  async clear(): Promise<void> {
    await this.close();
    await rm(path.join(this.dir, 'blocks.idx'), { force: true });
    await rm(path.join(this.dir, 'blocks.dat'), { force: true });
    await rm(path.join(this.dir, 'placed.idx'), { force: true });
  }
}
