/**
 * What a layer holds: its map, normalised to whole clusters, and its bytes, read in guest order.
 *
 * A layer's map is a list of extents in guest order, each `data` or `zero`, starting at a multiple of
 * the layer's cluster size and ending at one (or at the virtual size); unallocated ranges are absent.
 * Data extents are cut into blocks at every multiple of BLOCK_SIZE (in guest offsets) and at the
 * extent's ends (digest.ts). This is exactly what an imported layer holds, so export, import, sync and
 * src/snapshots/identity.ts all see the same map and compute the same digest.
 *
 * Below a root layer (no backing file, or `resolved`) there is nothing but zeros, so a zero extent
 * there says nothing that an absent one does not: a root layer's map has no zero extents. An import
 * then never has to write zero clusters for a root (a "zero-range bomb" costs nothing), and the map,
 * digest and content id of a root are the same whether its zeros were written as zero clusters or
 * left unallocated (docs/bundle-format.md).
 *
 * Normalisation: a plain layer's own runs are already whole clusters. Two cases are not:
 *  - extended L2 (subclusters): a cluster with any data, or a mix of zero and unallocated subclusters,
 *    becomes one data cluster whose bytes are read through the backing chain;
 *  - a root snapshot whose layer has a backing file outside clonebox (`resolved`): the layer stands for
 *    the whole disk, so the map is taken from the resolved chain, cluster by cluster the same way.
 */

import { CloneboxError } from '../errors.js';
import { Chain } from '../qcow2/chain.js';
import { Qcow2Image } from '../qcow2/reader.js';
import { type DataChunk, HostReader, readData } from '../qcow2/stream.js';

/**
 * Copies bytes [piece.offset + skip, + len) of a data piece into `buf` at `at`. Calls must come in
 * guest order (each piece's bytes from its start to its end, pieces one after the other).
 */
export type Fill = (buf: Buffer, at: number, skip: number, len: number) => Promise<void>;

type Piece = { kind: 'zero'; offset: number; length: number } | { kind: 'data'; offset: number; length: number; fill: Fill };

/** Slow-path data pieces are at most this long, so one chain read never needs more memory. */
const MAX_PIECE = 4 * 1024 * 1024;

export interface LayerSource {
  readonly virtualSize: number;
  readonly clusterSize: number;
  /** The layer's normalised map in guest order; data pieces' bytes are read through `fill`, in order. */
  pieces(): AsyncGenerator<Piece>;
  close(): Promise<void>;
}

/**
 * Opens a layer for reading its map. `resolved`: the layer stands for its whole backing chain (a root
 * snapshot on an external base image).
 */
export async function openLayer(file: string, resolved: boolean): Promise<LayerSource> {
  const img = await Qcow2Image.open(file);
  const vs = img.virtualSize;
  const cs = img.clusterSize;
  const root = resolved || img.backingFile === null;
  if (!resolved && !img.header.extendedL2) {
    // Fast path: the map from the layer's own runs. A plain run's bytes are read from the host straight
    // into the caller's buffer: no copy of every byte through the streaming reader's ring, and no ring
    // (bench/README.md, "Figures behind the code"). Compressed clusters come from the streaming reader
    // (batched host reads, read-ahead, decompression into one reused ring) and are copied from there.
    let host: HostReader | null = null;
    let chunks: AsyncGenerator<DataChunk> | null = null;
    let cur: DataChunk | null = null;
    const fillCompressed = async (buf: Buffer, at: number, from: number, len: number): Promise<void> => {
      chunks ??= readData(img, { reuseBuffers: true, compressedOnly: true, maxBatchBytes: 1024 * 1024, readAheadBytes: 4 * 1024 * 1024 });
      let done = 0;
      while (done < len) {
        const g = from + done;
        while (!cur || g >= cur.offset + cur.data.length) {
          const r = await chunks.next();
          if (r.done) throw new CloneboxError('INTERNAL', `layer data ends before ${g}, ${file}`);
          cur = r.value;
        }
        if (g < cur.offset) throw new CloneboxError('INTERNAL', `layer data out of step at ${g}, ${file}`);
        const s = g - cur.offset;
        const n = Math.min(len - done, cur.data.length - s);
        cur.data.copy(buf, at + done, s, s + n);
        done += n;
      }
    };
    const fillPlain = async (buf: Buffer, at: number, hostAt: number, len: number): Promise<void> => {
      host ??= await HostReader.open(img);
      await host.read(buf.subarray(at, at + len), hostAt);
    };
    return {
      virtualSize: vs,
      clusterSize: cs,
      async *pieces() {
        for await (const r of img.runs()) {
          if (r.kind === 'zero') {
            if (!root) yield { kind: 'zero', offset: r.offset, length: r.length };
          } else if (r.kind === 'data') {
            const base = r.offset;
            const hostBase = r.hostOffset!; // every plain data run has one (reader.ts)
            const fill: Fill = r.compressed
              ? (buf, at, skip, len) => fillCompressed(buf, at, base + skip, len)
              : (buf, at, skip, len) => fillPlain(buf, at, hostBase + skip, len);
            yield { kind: 'data', offset: r.offset, length: r.length, fill };
          }
        }
      },
      close: async () => {
        await chunks?.return(undefined);
        await (host as HostReader | null)?.close();
        await img.close();
      },
    };
  }
  // Slow path: classify every cluster from a finer or deeper view, read data through the chain.
  let chain: Chain;
  try {
    chain = await Chain.open(file);
  } catch (err) {
    await img.close();
    throw err;
  }
  // In a root, unallocated reads as zero: a cluster of zero and unallocated subclusters is zero there.
  const below = root ? ('zero' as const) : ('unallocated' as const);
  const fine = async function* (): AsyncGenerator<{ offset: number; length: number; kind: 'data' | 'zero' | 'unallocated' }> {
    if (resolved) {
      for await (const r of chain.resolve(0, vs)) {
        yield { offset: r.offset, length: r.length, kind: r.layer < 0 || r.run === null ? below : r.run.kind };
      }
    } else {
      for await (const r of img.runs()) yield { offset: r.offset, length: r.length, kind: r.kind === 'unallocated' ? below : r.kind };
    }
  };
  return {
    virtualSize: vs,
    clusterSize: cs,
    async *pieces() {
      for await (const e of normalise(fine(), cs, vs)) {
        if (e.kind === 'zero') {
          if (!root) yield { kind: 'zero', offset: e.offset, length: e.length };
          continue;
        }
        for (let o = e.offset; o < e.offset + e.length; o += MAX_PIECE) {
          const base = o;
          const len = Math.min(MAX_PIECE, e.offset + e.length - o);
          yield {
            kind: 'data',
            offset: o,
            length: len,
            fill: async (buf, at, skip, n) => {
              (await chain.read(base + skip, n)).copy(buf, at);
            },
          };
        }
      }
    },
    close: async () => {
      await chain.close();
      await img.close();
    },
  };
}

/**
 * Turns a fine-grained, contiguous, sorted description of [0, vs) into whole-cluster extents: a
 * cluster entirely unallocated is dropped, entirely zero is zero, anything else is data. Adjacent
 * extents of one kind are merged. Ranges spanning many clusters are handled in one step.
 */
export async function* normalise(
  src: AsyncIterable<{ offset: number; length: number; kind: 'data' | 'zero' | 'unallocated' }>,
  cs: number,
  vs: number,
): AsyncGenerator<{ offset: number; length: number; kind: 'data' | 'zero' }> {
  let out: { offset: number; length: number; kind: 'data' | 'zero' } | null = null;
  const emit = function* (offset: number, length: number, kind: 'data' | 'zero' | 'unallocated') {
    if (kind === 'unallocated' || length === 0) return;
    if (out && out.kind === kind && out.offset + out.length === offset) {
      out.length += length;
      return;
    }
    if (out) yield out;
    out = { offset, length, kind };
  };
  // The cluster being assembled from partial pieces.
  let cur = -1;
  let mix = 0; // bit 1 data, 2 zero, 4 unallocated
  const classOf = (m: number): 'data' | 'zero' | 'unallocated' => (m & 1 || m === 6 ? 'data' : m === 2 ? 'zero' : 'unallocated');
  const bit = (k: string) => (k === 'data' ? 1 : k === 'zero' ? 2 : 4);
  for await (const p of src) {
    let off = p.offset;
    const end = Math.min(p.offset + p.length, vs);
    while (off < end) {
      const cStart = off - (off % cs);
      const cEnd = Math.min(cStart + cs, vs);
      if (off === cStart && end >= cEnd) {
        // Whole clusters from here: as many as the piece covers.
        const wholeEnd = end >= vs ? vs : end - (end % cs);
        yield* emit(cStart, wholeEnd - cStart, p.kind);
        off = wholeEnd;
        continue;
      }
      const c = cStart / cs;
      if (c !== cur) {
        cur = c;
        mix = 0;
      }
      const stop = Math.min(end, cEnd);
      mix |= bit(p.kind);
      off = stop;
      if (off === cEnd) {
        yield* emit(cStart, cEnd - cStart, classOf(mix));
        cur = -1;
        mix = 0;
      }
    }
  }
  if (out) yield out;
}
