/**
 * The one decoder of qcow2 compressed clusters, for both the random-access reader (reader.ts) and the
 * streaming reader (stream.ts): deflate (raw, no header, as QEMU writes it) or zstd (one frame per
 * cluster), by the image's compression type. A cluster that does not decompress to exactly one cluster
 * is QCOW2_CORRUPT, or QCOW2_TRUNCATED when the file ends inside its descriptor's range.
 */
import { createRequire } from 'node:module';
import { CloneboxError } from '../errors.js';
import { type ZstdDCtx, zstdBinding } from '../zstd.js';

// zlib loads at the first deflate cluster, not with the module: every command that opens an image
// imports this decoder, and most images hold no deflate cluster at all.
const require = createRequire(import.meta.url);
let zlib: typeof import('node:zlib') | undefined;

/** Where a compressed cluster is, for the error that names it. */
export interface ClusterAt {
  path: string;
  /** Host offset of the compressed bytes. */
  host: number;
  /** The file ended before the descriptor's byte count: a failure means truncation, not damage. */
  cut: boolean;
}

/**
 * Decompresses one cluster of `clusterSize` bytes from `src`. A zstd cluster goes into `into` when
 * given (exactly one cluster of memory the caller owns, e.g. a streaming ring); deflate always returns
 * fresh memory (zlib allocates it anyway, so copying into `into` would only add work).
 */
export function decodeCluster(type: 'zlib' | 'zstd', src: Buffer, clusterSize: number, at: ClusterAt, into?: Buffer): Buffer {
  let out: Buffer;
  try {
    out =
      type === 'zstd'
        ? zstdInto(src, into ?? Buffer.allocUnsafe(clusterSize))
        : // chunkSize just above the cluster size: one output buffer, not 16 KiB pieces joined afterwards.
          inflate(src, clusterSize);
  } catch (err) {
    if (err instanceof CloneboxError) throw err;
    throw clusterError(at, `does not decompress (${(err as Error).message})`);
  }
  if (out.length !== clusterSize) throw clusterError(at, `decompresses to ${out.length} bytes, not ${clusterSize}`);
  return out;
}

function inflate(src: Buffer, clusterSize: number): Buffer {
  zlib ??= require('node:zlib') as typeof import('node:zlib');
  return zlib.inflateRawSync(src, { finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: clusterSize, chunkSize: clusterSize + 64 });
}

function clusterError(at: ClusterAt, why: string): CloneboxError {
  if (at.cut) {
    return new CloneboxError(
      'QCOW2_TRUNCATED',
      `truncated qcow2 image: compressed cluster at 0x${at.host.toString(16)} is cut off by the end of the file, ${at.path}`,
    );
  }
  return new CloneboxError('QCOW2_CORRUPT', `corrupt qcow2 image: compressed cluster at 0x${at.host.toString(16)} ${why}, ${at.path}`, {
    hint: 'the file is damaged; `qemu-img check` may tell more',
  });
}

let dctx: ZstdDCtx | null = null;

/**
 * Decompresses one zstd cluster into `dst` with a context reused across clusters (creating one per
 * cluster costs more than decompressing). QEMU writes one frame per cluster and the input may carry
 * padding up to the sector end: stream until the output is full or the frame ends. Returns the part of
 * `dst` produced.
 */
function zstdInto(src: Buffer, dst: Buffer): Buffer {
  const z = zstdBinding();
  dctx ??= new z.DCtx();
  dctx.reset(z.ResetDirective.sessionOnly);
  let produced = 0;
  let consumed = 0;
  // Each step consumes input or produces output; a step doing neither means the frame is stuck.
  while (produced < dst.length && consumed < src.length) {
    const [ret, p, c] = dctx.decompressStream(dst.subarray(produced), src.subarray(consumed));
    produced += p;
    consumed += c;
    if (ret === 0 || (p === 0 && c === 0)) break;
  }
  return dst.subarray(0, produced);
}
