/**
 * The container every repository file but config is (format.ts, docs/archive-format.md §3):
 *
 *   magic (8) | entry 0: u32 L, L sealed bytes | entry 1 ... | trailer: u32 L, L sealed bytes | footer
 *   footer (16) = u64 offset of the trailer's length field | "CBXA-END"
 *
 * A writer streams entries into a hidden temporary beside the final name, then writes the trailer and
 * the footer, fsyncs, and link(2)s it into place: a file under its final name is always whole, and an
 * existing file is never replaced (what append-only mode relies on). A reader trusts no length: the
 * footer, the trailer length and every entry length are checked against the file size and the limit
 * for that entry before anything is allocated.
 */
import { createHash } from 'node:crypto';
import { type FileHandle, link, open, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Sealer } from '../bundle/crypto.js';
import { EntryKind } from '../bundle/format.js';
import { crashPoint } from '../crash.js';
import { CloneboxError, ioError } from '../errors.js';
import { ensureDir, fsyncDir, tempDone, tempPathFor } from '../fsutil.js';
import { DATA_KIND, type FileType, FOOTER_BYTES, FOOTER_MAGIC, MAGIC, MAGIC_BYTES, TRAILER_INDEX } from './format.js';

export function archiveCorrupt(what: string, file: string): CloneboxError {
  return new CloneboxError('ARCHIVE_CORRUPT', `archive file is damaged or was modified: ${what}, ${file}`, {
    hint: 'nothing was written; `clonebox archive check` lists what is damaged',
  });
}

/** The Sealer context of one file: SHA-256("clonebox-archive/v1\0" || config checksum || magic || basename). */
export function fileContext(configChecksum: Buffer, type: FileType, name: string): Buffer {
  return createHash('sha256').update('clonebox-archive/v1\0', 'latin1').update(configChecksum).update(MAGIC[type]).update(name, 'latin1').digest();
}

function writeU64(b: Buffer, v: number, off: number): void {
  b.writeUInt32BE(Math.floor(v / 0x100000000), off);
  b.writeUInt32BE(v >>> 0, off + 4);
}

export function readU64(b: Buffer, off: number): number {
  const hi = b.readUInt32BE(off);
  if (hi >= 0x200000) return Number.MAX_SAFE_INTEGER + 1; // beyond 2^53: every range check refuses it
  return hi * 0x100000000 + b.readUInt32BE(off + 4);
}

export { writeU64 };

export class ContainerWriter {
  private pos = MAGIC_BYTES;
  private entries = 0;
  private done = false;

  private constructor(
    private readonly fh: FileHandle,
    private readonly tmp: string,
    readonly file: string,
    private readonly type: FileType,
    private readonly sealer: Sealer,
  ) {}

  /**
   * Starts writing `file` (its directory is created when missing). A layer map, whose name is known
   * only at the end, starts under a provisional name and finish() gives the final one.
   */
  static async create(file: string, type: FileType, sealer: Sealer): Promise<ContainerWriter> {
    await ensureDir(path.dirname(file), 0o700);
    const tmp = tempPathFor(file);
    let fh: FileHandle;
    try {
      fh = await open(tmp, 'wx', 0o600);
    } catch (err) {
      tempDone(tmp);
      throw ioError(err, 'cannot create archive file', file);
    }
    const w = new ContainerWriter(fh, tmp, file, type, sealer);
    await w.write([MAGIC[type]], 0);
    return w;
  }

  /** Bytes written so far. */
  get bytes(): number {
    return this.pos;
  }

  get count(): number {
    return this.entries;
  }

  private async write(parts: Buffer[], at: number): Promise<void> {
    try {
      await this.fh.writev(parts, at);
    } catch (err) {
      throw ioError(err, 'cannot write archive file', this.file);
    }
  }

  /** Appends entry number `count` and returns where it went: offset of its length field, sealed length, number. */
  async add(payload: Buffer): Promise<{ offset: number; length: number; index: number }> {
    const index = this.entries;
    const sealed = this.sealer.sealParts(DATA_KIND[this.type], index, payload);
    const length = sealed.reduce((a, b) => a + b.length, 0);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(length);
    const offset = this.pos;
    await this.write([head, ...sealed], offset);
    this.pos += 4 + length;
    this.entries++;
    return { offset, length, index };
  }

  /**
   * Writes the trailer and the footer, fsyncs and links the file into place. Returns false (and
   * deletes the temporary) when a file of that name exists: files are never replaced.
   */
  async finish(trailer: Buffer, finalFile: string = this.file): Promise<boolean> {
    const sealed = this.sealer.seal(EntryKind.Seal, TRAILER_INDEX, trailer);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(sealed.length);
    const footer = Buffer.alloc(FOOTER_BYTES);
    writeU64(footer, this.pos, 0);
    FOOTER_MAGIC.copy(footer, 8);
    await this.write([head, sealed, footer], this.pos);
    this.pos += 4 + sealed.length + FOOTER_BYTES;
    let placed = true;
    try {
      await this.fh.sync();
      await this.fh.close();
      this.done = true;
      crashPoint('archive.file-synced');
      await ensureDir(path.dirname(finalFile), 0o700);
      try {
        await link(this.tmp, finalFile);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        placed = false;
      }
    } catch (err) {
      await this.abort();
      throw ioError(err, 'cannot write archive file', this.file);
    }
    await unlink(this.tmp).catch(() => undefined);
    tempDone(this.tmp);
    if (placed) await fsyncDir(path.dirname(finalFile));
    crashPoint('archive.file-written');
    return placed;
  }

  /** Drops the file being written. */
  async abort(): Promise<void> {
    if (!this.done) {
      this.done = true;
      await this.fh.close().catch(() => undefined);
    }
    await unlink(this.tmp).catch(() => undefined);
    tempDone(this.tmp);
  }
}

/** Reads a container. Entries are opened one at a time; nothing is held but the trailer. */
export class ContainerReader {
  private constructor(
    private readonly fh: FileHandle,
    readonly file: string,
    readonly size: number,
    readonly trailerOffset: number,
    readonly trailer: Buffer,
    private readonly type: FileType,
    private readonly sealer: Sealer,
  ) {}

  /**
   * Opens `file` as a container of `type` sealed with `sealer`, reads and authenticates its trailer
   * (at most `maxTrailer` bytes). ARCHIVE_CORRUPT for anything that does not check.
   */
  static async open(file: string, type: FileType, sealer: Sealer, maxTrailer: number): Promise<ContainerReader> {
    let fh: FileHandle;
    try {
      fh = await open(file, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw archiveCorrupt('the file is missing', file);
      throw ioError(err, 'cannot read archive file', file);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw archiveCorrupt('not a regular file', file);
      const size = st.size;
      if (size < MAGIC_BYTES + 4 + FOOTER_BYTES) throw archiveCorrupt(`${size} bytes, too short for any archive file`, file);
      const magic = await readAt(fh, 0, MAGIC_BYTES, file);
      if (!magic.equals(MAGIC[type])) throw archiveCorrupt(`not a ${type} file (magic ${JSON.stringify(magic.toString('latin1'))})`, file);
      const footer = await readAt(fh, size - FOOTER_BYTES, FOOTER_BYTES, file);
      if (!footer.subarray(8).equals(FOOTER_MAGIC)) throw archiveCorrupt('no footer (the file was cut short?)', file);
      const tOff = readU64(footer, 0);
      if (tOff < MAGIC_BYTES || tOff > size - FOOTER_BYTES - 4) throw archiveCorrupt(`trailer offset ${tOff} is outside the file`, file);
      const tLen = (await readAt(fh, tOff, 4, file)).readUInt32BE(0);
      if (tOff + 4 + tLen !== size - FOOTER_BYTES) throw archiveCorrupt(`trailer length ${tLen} does not end at the footer`, file);
      if (tLen > maxTrailer + sealer.overhead) throw archiveCorrupt(`trailer of ${tLen} bytes is larger than allowed (${maxTrailer})`, file);
      const sealed = await readAt(fh, tOff + 4, tLen, file);
      const trailer = sealer.open(EntryKind.Seal, TRAILER_INDEX, sealed);
      if (!trailer) throw archiveCorrupt('trailer does not authenticate', file);
      return new ContainerReader(fh, file, size, tOff, trailer, type, sealer);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Entry number `index`, whose length field is at `offset`. `expectLength` (from an index row): the
   * sealed length it must have. At most `max` payload bytes.
   */
  async entryAt(offset: number, index: number, max: number, expectLength?: number): Promise<{ payload: Buffer; next: number }> {
    const f = this.file;
    if (offset < MAGIC_BYTES || offset + 4 > this.trailerOffset) throw archiveCorrupt(`entry ${index} at ${offset} is outside the entries`, f);
    const len = (await readAt(this.fh, offset, 4, f)).readUInt32BE(0);
    if (expectLength !== undefined && len !== expectLength)
      throw archiveCorrupt(`entry ${index} at ${offset} is ${len} bytes, the index says ${expectLength}`, f);
    if (len > max + this.sealer.overhead) throw archiveCorrupt(`entry ${index} at ${offset} claims ${len} bytes (at most ${max})`, f);
    if (offset + 4 + len > this.trailerOffset) throw archiveCorrupt(`entry ${index} at ${offset} runs into the trailer`, f);
    const sealed = await readAt(this.fh, offset + 4, len, f);
    const payload = this.sealer.open(DATA_KIND[this.type], index, sealed);
    if (!payload) throw archiveCorrupt(`entry ${index} at ${offset} does not authenticate`, f);
    return { payload, next: offset + 4 + len };
  }

  /** Entries in order from the first; the last must end exactly at the trailer. */
  async *entries(max: number): AsyncGenerator<Buffer> {
    let at = MAGIC_BYTES;
    let i = 0;
    while (at < this.trailerOffset) {
      const { payload, next } = await this.entryAt(at, i, max);
      yield payload;
      at = next;
      i++;
    }
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

async function readAt(fh: FileHandle, at: number, n: number, file: string): Promise<Buffer> {
  const b = Buffer.allocUnsafe(n);
  let got = 0;
  while (got < n) {
    let r: number;
    try {
      ({ bytesRead: r } = await fh.read(b, got, n - got, at + got));
    } catch (err) {
      throw ioError(err, 'cannot read archive file', file);
    }
    if (r === 0) throw archiveCorrupt(`ends at ${at + got}, before the ${n} bytes expected at ${at}`, file);
    got += r;
  }
  return b;
}
