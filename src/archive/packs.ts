/**
 * Pack files (packs/<xx>/<id>): a container whose entries are bundle frame records (src/bundle/packs.ts:
 * u8 type=1, u8 codec, u32 n, u32 stored length, n × {u32 raw length, 32-byte block id}, stored bytes),
 * one frame per entry so that one frame is read and opened without the rest of the pack. The trailer
 * lists the frames and their blocks, so the index can be rebuilt (and gc can tell a pack's blocks) from
 * trailers alone:
 *
 *   u32 version = 1 | u32 frame count F |
 *   F × { u64 entry offset, u32 sealed length, u32 raw length, u32 stored length, u8 codec, u32 n, n × {u32 length, 32 id} }
 */
import type { FrameBlock } from '../bundle/packs.js';
import { PackWriter, parsePack } from '../bundle/packs.js';
import { Codec } from '../content/codec.js';
import { BLOCK_SIZE } from '../content/digest.js';
import { CloneboxError } from '../errors.js';
import { archiveCorrupt, ContainerReader, ContainerWriter, readU64, writeU64 } from './container.js';
import { FileType, MAX_PACK_ENTRY, MAX_PACK_FRAMES, MAX_TRAILER } from './format.js';
import { newFileId, type Repo } from './repo.js';

/** Where one block lies: what an index row holds. */
export interface BlockLocation {
  pack: string;
  /** Offset of the frame entry's length field in the pack. */
  offset: number;
  /** Sealed length of the frame entry. */
  length: number;
  /** Frame number (entry index) in the pack. */
  frame: number;
  /** The block's position among the frame's blocks. */
  slot: number;
}

export interface PackFrame {
  offset: number;
  length: number;
  rawLength: number;
  storedLength: number;
  codec: Codec;
  blocks: FrameBlock[];
}

/** Writes one pack file, frame by frame. */
export class PackFileWriter {
  private readonly frames: PackFrame[] = [];
  private readonly builder = new PackWriter(4 * 1024 * 1024);

  private constructor(
    readonly id: string,
    private readonly w: ContainerWriter,
  ) {}

  static async create(repo: Repo): Promise<PackFileWriter> {
    const id = newFileId();
    return new PackFileWriter(id, await ContainerWriter.create(repo.packPath(id), FileType.Pack, repo.sealer(FileType.Pack, id)));
  }

  get bytes(): number {
    return this.w.bytes;
  }

  get frameCount(): number {
    return this.frames.length;
  }

  /** Appends a frame; returns its blocks' locations' common part (frame number, offset, length). */
  async frame(codec: Codec, blocks: FrameBlock[], stored: Buffer, rawLength: number): Promise<{ frame: number; offset: number; length: number }> {
    this.builder.frame(codec, blocks, stored);
    const payload = this.builder.take();
    const at = await this.w.add(payload);
    this.builder.release(payload, Promise.resolve());
    await this.builder.ready();
    this.frames.push({
      offset: at.offset,
      length: at.length,
      rawLength,
      storedLength: stored.length,
      codec,
      blocks: blocks.map((b) => ({ length: b.length, id: Buffer.from(b.id) })),
    });
    return { frame: at.index, offset: at.offset, length: at.length };
  }

  /** Writes the trailer, fsyncs, puts the pack in place. */
  async finish(): Promise<void> {
    let size = 8;
    for (const f of this.frames) size += 25 + f.blocks.length * 36;
    const t = Buffer.alloc(size);
    t.writeUInt32BE(1, 0);
    t.writeUInt32BE(this.frames.length, 4);
    let o = 8;
    for (const f of this.frames) {
      writeU64(t, f.offset, o);
      t.writeUInt32BE(f.length, o + 8);
      t.writeUInt32BE(f.rawLength, o + 12);
      t.writeUInt32BE(f.storedLength, o + 16);
      t.writeUInt8(f.codec, o + 20);
      t.writeUInt32BE(f.blocks.length, o + 21);
      o += 25;
      for (const b of f.blocks) {
        t.writeUInt32BE(b.length, o);
        b.id.copy(t, o + 4);
        o += 36;
      }
    }
    if (!(await this.w.finish(t))) throw new CloneboxError('INTERNAL', `pack id ${this.id} was taken`);
  }

  abort(): Promise<void> {
    return this.w.abort();
  }
}

/** A frame as read back: its record, checked to be one whole frame. */
export type FrameRecord = { codec: Codec; lengths: number[]; ids: Buffer[]; rawLength: number; stored: Buffer };

/** Reads frames (and the trailer) of one pack file. */
export class PackFileReader {
  private constructor(
    readonly id: string,
    private readonly c: ContainerReader,
  ) {}

  static async open(repo: Repo, id: string): Promise<PackFileReader> {
    const c = await ContainerReader.open(repo.packPath(id), FileType.Pack, repo.sealer(FileType.Pack, id), MAX_TRAILER);
    return new PackFileReader(id, c);
  }

  get file(): string {
    return this.c.file;
  }

  /** The frame at an index row's location. */
  async frame(loc: { frame: number; offset: number; length: number }): Promise<FrameRecord> {
    const { payload } = await this.c.entryAt(loc.offset, loc.frame, MAX_PACK_ENTRY, loc.length);
    return oneFrame(payload, `frame ${loc.frame}`, this.c.file);
  }

  /** The trailer's frame list, checked against the file's layout. */
  frames(): PackFrame[] {
    const t = this.c.trailer;
    const f = this.c.file;
    if (t.length < 8 || t.readUInt32BE(0) !== 1) throw archiveCorrupt('pack trailer has no version 1 header', f);
    const n = t.readUInt32BE(4);
    if (n > MAX_PACK_FRAMES) throw archiveCorrupt(`pack trailer claims ${n} frames`, f);
    const out: PackFrame[] = [];
    let o = 8;
    let expect = 8;
    for (let i = 0; i < n; i++) {
      if (t.length - o < 25) throw archiveCorrupt(`pack trailer ends in frame ${i}`, f);
      const fr: PackFrame = {
        offset: readU64(t, o),
        length: t.readUInt32BE(o + 8),
        rawLength: t.readUInt32BE(o + 12),
        storedLength: t.readUInt32BE(o + 16),
        codec: t.readUInt8(o + 20) as Codec,
        blocks: [],
      };
      const nb = t.readUInt32BE(o + 21);
      o += 25;
      if (fr.offset !== expect) throw archiveCorrupt(`pack trailer places frame ${i} at ${fr.offset}, not ${expect}`, f);
      if (fr.codec !== Codec.Raw && fr.codec !== Codec.Zstd) throw archiveCorrupt(`frame ${i} has unknown codec ${fr.codec}`, f);
      if (nb < 1 || nb > (t.length - o) / 36) throw archiveCorrupt(`pack trailer claims ${nb} blocks in frame ${i}`, f);
      let raw = 0;
      for (let k = 0; k < nb; k++) {
        const len = t.readUInt32BE(o);
        if (len < 1 || len > BLOCK_SIZE) throw archiveCorrupt(`frame ${i} block ${k} claims ${len} bytes`, f);
        fr.blocks.push({ length: len, id: t.subarray(o + 4, o + 36) });
        raw += len;
        o += 36;
      }
      if (raw !== fr.rawLength) throw archiveCorrupt(`frame ${i}'s blocks add up to ${raw} bytes, not ${fr.rawLength}`, f);
      expect = fr.offset + 4 + fr.length;
      out.push(fr);
    }
    if (o !== t.length) throw archiveCorrupt('pack trailer has bytes after its last frame', f);
    if (expect !== this.c.trailerOffset) throw archiveCorrupt('pack frames do not end where the trailer starts', f);
    return out;
  }

  close(): Promise<void> {
    return this.c.close();
  }
}

/** Parses an entry that must be exactly one frame record. */
function oneFrame(payload: Buffer, where: string, file: string): FrameRecord {
  let rec: FrameRecord | null = null;
  try {
    for (const r of parsePack(payload, where, file)) {
      if (r.type !== 'frame' || rec) throw archiveCorrupt(`${where} is not exactly one frame`, file);
      rec = r;
    }
  } catch (err) {
    if (err instanceof CloneboxError && err.code === 'BUNDLE_CORRUPT')
      throw archiveCorrupt(err.message.replace(/^bundle is damaged or was modified: /, ''), file);
    throw err;
  }
  if (!rec) throw archiveCorrupt(`${where} is empty`, file);
  return rec;
}
