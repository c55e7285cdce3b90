/**
 * zstd decompression of qcow2 compressed clusters. The native zstd binding is loaded on first use only,
 * so that commands which never meet a zstd cluster do not pay for loading it.
 */
import { createRequire } from 'node:module';
import { CloneboxError } from '../errors.js';

interface DCtxLike {
  decompressStream(dst: Uint8Array, src: Uint8Array): [number, number, number];
}
let binding: { DCtx: new () => DCtxLike } | null = null;

function load(): { DCtx: new () => DCtxLike } {
  if (!binding) {
    const require = createRequire(import.meta.url);
    try {
      binding = require('zstd-napi/binding') as { DCtx: new () => DCtxLike };
    } catch (err) {
      throw new CloneboxError('INTERNAL', `zstd support is not available (${(err as Error).message})`, {
        hint: 'reinstall clonebox with `npm ci` so that zstd-napi builds',
      });
    }
  }
  return binding;
}

/**
 * Decompresses one cluster. QEMU stores a single zstd frame and the input may carry trailing bytes up
 * to the sector end, so we stream until the output is full or the input ends, never beyond `size`.
 */
export async function decompressZstdCluster(src: Buffer, size: number): Promise<Buffer> {
  const { DCtx } = load();
  const dctx = new DCtx();
  const out = Buffer.alloc(size);
  let produced = 0;
  let consumed = 0;
  // Each step consumes input or produces output; a step doing neither means the frame is stuck.
  while (produced < size && consumed < src.length) {
    const [ret, p, c] = dctx.decompressStream(out.subarray(produced), src.subarray(consumed));
    produced += p;
    consumed += c;
    if (ret === 0) break; // frame complete
    if (p === 0 && c === 0) break;
  }
  return out.subarray(0, produced);
}
