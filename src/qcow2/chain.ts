/**
 * Reads a disk as the VM sees it: an image and its backing chain, resolved top-down per range.
 * Raw backing files are supported (a raw file reads as data up to its length, zeros beyond).
 */
import { constants as fsc } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { type OpenOptions, Qcow2Image, type Run } from './reader.js';

/** Bounds recursion on hostile or cyclic backing chains (QEMU uses a similar limit). */
const MAX_CHAIN_DEPTH = 1000;

export interface Layer {
  readonly path: string;
  readonly virtualSize: number;
  runsIn(start: number, end: number): AsyncGenerator<Run>;
  readRun(run: Run): Promise<Buffer>;
  close(): Promise<void>;
}

class RawLayer implements Layer {
  readonly path: string;
  readonly virtualSize: number;
  private readonly fh: FileHandle;

  private constructor(p: string, fh: FileHandle, size: number) {
    this.path = p;
    this.fh = fh;
    this.virtualSize = size;
  }

  static async open(file: string): Promise<RawLayer> {
    let fh: FileHandle;
    try {
      // O_NONBLOCK: a FIFO must be refused below, not waited on forever (no effect on regular files).
      fh = await open(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
    } catch (err) {
      throw ioError(err, 'cannot open backing file', file);
    }
    const st = await fh.stat();
    if (!st.isFile() && !st.isBlockDevice()) {
      await fh.close();
      throw new CloneboxError('BACKING_MISSING', `backing file is not a regular file, ${file}`);
    }
    return new RawLayer(file, fh, st.size);
  }

  async *runsIn(start: number, end: number): AsyncGenerator<Run> {
    const dataEnd = Math.min(end, this.virtualSize);
    const step = 4 * 1024 * 1024;
    for (let o = start; o < dataEnd; o += step) {
      const len = Math.min(step, dataEnd - o);
      yield { offset: o, length: len, kind: 'data', hostOffset: o };
    }
    if (end > Math.max(start, dataEnd)) yield { offset: Math.max(start, dataEnd), length: end - Math.max(start, dataEnd), kind: 'zero' };
  }

  async readRun(run: Run): Promise<Buffer> {
    const buf = Buffer.alloc(run.length);
    if (run.kind !== 'data') return buf;
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, run.hostOffset! + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** A resolved piece of the guest disk: which layer supplies it (null: nothing, reads as zeros). */
export interface ResolvedRun {
  offset: number;
  length: number;
  /** Index into chain.layers (0 = top), or -1 when no layer holds data there. */
  layer: number;
  run: Run | null;
}

export class Chain {
  /** layers[0] is the top image; each next one is the previous one's backing file. */
  readonly layers: Layer[];

  private constructor(layers: Layer[]) {
    this.layers = layers;
  }

  get top(): Qcow2Image {
    return this.layers[0] as Qcow2Image;
  }

  get virtualSize(): number {
    return this.layers[0]!.virtualSize;
  }

  /**
   * The chain to read a layer's own data through: the layer alone when that is enough (no
   * subclusters, which can leave part of an allocated cluster to the backing file), else the whole
   * chain. A map of a layer's own data (content/layer.ts) names only ranges in its allocated clusters;
   * opening every backing file for them made reading one layer of a long history cost the whole
   * history, and a layer deeper than MAX_CHAIN_DEPTH could not be read at all.
   */
  static async openOwn(file: string): Promise<Chain> {
    const img = await Qcow2Image.open(file);
    let stopAt: string | null;
    try {
      stopAt = img.header.extendedL2 ? null : img.backingPath();
    } finally {
      await img.close();
    }
    return Chain.open(file, stopAt === null ? {} : { stopAt });
  }

  /**
   * Opens `file` and its whole backing chain. `stopAt` (absolute path) ends the chain early: that
   * file is not opened, and ranges not found above it read as unallocated.
   */
  static async open(file: string, opts: OpenOptions & { stopAt?: string } = {}): Promise<Chain> {
    const layers: Layer[] = [];
    const seen = new Set<string>();
    try {
      let cur: string | null = path.resolve(file);
      let fmt: string | null = 'qcow2';
      while (cur !== null) {
        if (opts.stopAt && path.resolve(opts.stopAt) === cur) break;
        if (seen.has(cur)) throw new CloneboxError('QCOW2_CORRUPT', `backing chain loops back to ${cur}, ${file}`);
        if (layers.length >= MAX_CHAIN_DEPTH) throw new CloneboxError('QCOW2_TOO_LARGE', `backing chain is deeper than ${MAX_CHAIN_DEPTH}, ${file}`);
        seen.add(cur);
        if (fmt === 'raw') {
          layers.push(await RawLayer.open(cur));
          break;
        }
        let img: Qcow2Image;
        try {
          img = await Qcow2Image.open(cur, opts);
        } catch (err) {
          if (layers.length > 0 && err instanceof CloneboxError && err.code === 'IO') {
            throw new CloneboxError('BACKING_MISSING', `backing file is missing or unreadable, ${cur}`, {
              hint: `needed by ${layers[layers.length - 1]!.path}`,
            });
          }
          throw err;
        }
        layers.push(img);
        const next = img.backingPath();
        fmt = img.extensions.backingFormat;
        if (fmt !== null && fmt !== 'qcow2' && fmt !== 'raw') {
          throw new CloneboxError('QCOW2_UNSUPPORTED', `unsupported backing format ${fmt}, ${img.path}`);
        }
        if (next !== null && fmt === null) fmt = await sniffFormat(next);
        cur = next;
      }
    } catch (err) {
      for (const l of layers) await l.close().catch(() => undefined);
      throw err;
    }
    return new Chain(layers);
  }

  /**
   * Splits [start, end) into pieces, each supplied by the topmost layer holding data or zeros there.
   * Layers below are only asked about ranges the layers above leave unallocated.
   */
  async *resolve(start = 0, end = this.virtualSize, depth = 0): AsyncGenerator<ResolvedRun> {
    end = Math.min(end, this.virtualSize);
    if (start >= end) return;
    const layer = this.layers[depth];
    if (!layer) {
      yield { offset: start, length: end - start, layer: -1, run: null };
      return;
    }
    let gapStart = -1;
    for await (const r of layer.runsIn(start, Math.min(end, layer.virtualSize))) {
      if (r.kind === 'unallocated') {
        if (gapStart < 0) gapStart = r.offset;
        continue;
      }
      if (gapStart >= 0) {
        yield* this.resolve(gapStart, r.offset, depth + 1);
        gapStart = -1;
      }
      yield { offset: r.offset, length: r.length, layer: depth, run: r };
    }
    if (gapStart >= 0) yield* this.resolve(gapStart, Math.min(end, layer.virtualSize), depth + 1);
    // A backing file shorter than the overlay reads as zeros past its end.
    if (end > layer.virtualSize) {
      const from = Math.max(start, layer.virtualSize);
      yield { offset: from, length: end - from, layer: -1, run: null };
    }
  }

  /** Bytes of a resolved piece (zeros when no layer holds data or the layer says zero). */
  async readResolved(r: ResolvedRun): Promise<Buffer> {
    if (r.layer < 0 || r.run === null || r.run.kind !== 'data') return Buffer.alloc(r.length);
    return this.layers[r.layer]!.readRun(r.run);
  }

  /** The guest bytes of [offset, offset+length) as the VM sees them. */
  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    for await (const r of this.resolve(offset, offset + length)) {
      if (r.layer < 0 || r.run === null || r.run.kind !== 'data') continue;
      const data = await this.readResolved(r);
      data.copy(out, r.offset - offset);
    }
    return out;
  }

  async close(): Promise<void> {
    for (const l of this.layers) await l.close().catch(() => undefined);
  }
}

/** QEMU probes an unnamed backing format; we do the same with the magic number. */
async function sniffFormat(file: string): Promise<'qcow2' | 'raw'> {
  let fh: FileHandle;
  try {
    // O_NONBLOCK: a FIFO must be refused below, not waited on forever (no effect on regular files).
    fh = await open(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch (err) {
    throw new CloneboxError('BACKING_MISSING', `backing file is missing or unreadable, ${file}`, { cause: err });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() && !st.isBlockDevice()) throw new CloneboxError('BACKING_MISSING', `backing file is not a regular file, ${file}`);
    const b = Buffer.alloc(4);
    const { bytesRead } = await fh.read(b, 0, 4, 0);
    return bytesRead === 4 && b.readUInt32BE(0) === 0x514649fb ? 'qcow2' : 'raw';
  } finally {
    await fh.close();
  }
}
