/**
 * Worker-thread entry for the frame pool (workers.ts): compresses frames (bundle export, sync serving)
 * and decompresses and hashes them (bundle import and verify). Buffers are transferred both ways, never copied between threads.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { type Codec, compressInto, decodeFrame } from './codec.js';

export type WorkerRequest =
  | { op: 'compress'; id: number; input: ArrayBuffer; length: number; output: ArrayBuffer; level: number }
  | {
      op: 'decode';
      id: number;
      codec: Codec;
      stored: ArrayBuffer | SharedArrayBuffer;
      offset: number;
      length: number;
      rawLength: number;
      lengths: Uint32Array;
      output?: ArrayBuffer;
    };

export type WorkerReply =
  /** Compressed (codec zstd: `output` holds `storedLength` bytes) or not worth it (codec raw: use `input`). Both buffers come back. */
  | { id: number; codec: Codec; storedLength: number; input: ArrayBuffer; output: ArrayBuffer }
  | { id: number; raw: ArrayBuffer; rawLength: number; shas: ArrayBuffer; stored: ArrayBuffer | SharedArrayBuffer }
  | { id: number; bad: true; stored: ArrayBuffer | SharedArrayBuffer; output?: ArrayBuffer }
  | { id: number; error: string };

function handle(msg: WorkerRequest): { reply: WorkerReply; transfer: ArrayBuffer[] } {
  switch (msg.op) {
    case 'compress': {
      const r = compressInto(new Uint8Array(msg.input, 0, msg.length), new Uint8Array(msg.output), msg.level);
      return { reply: { id: msg.id, codec: r.codec, storedLength: r.length, input: msg.input, output: msg.output }, transfer: [msg.input, msg.output] };
    }
    case 'decode': {
      const r = decodeFrame(msg.codec, new Uint8Array(msg.stored, msg.offset, msg.length), msg.rawLength, msg.lengths, msg.output);
      // Shared memory is not transferred (it never left the sender); the rest goes back to be reused.
      const stored = msg.stored instanceof ArrayBuffer ? [msg.stored] : [];
      if (!r) {
        const t = msg.output ? [...stored, msg.output] : stored;
        return { reply: { id: msg.id, bad: true, stored: msg.stored, ...(msg.output ? { output: msg.output } : {}) }, transfer: t };
      }
      const rawAb = r.raw.buffer as ArrayBuffer;
      const shaAb = r.shas.buffer as ArrayBuffer;
      return { reply: { id: msg.id, raw: rawAb, rawLength: r.raw.length, shas: shaAb, stored: msg.stored }, transfer: [rawAb, shaAb, ...stored] };
    }
  }
}

export function handleInline(msg: WorkerRequest): WorkerReply {
  return handle(msg).reply;
}

if (parentPort && (workerData as { cloneboxBundleWorker?: boolean } | null)?.cloneboxBundleWorker) {
  const port = parentPort;
  port.on('message', (msg: WorkerRequest) => {
    try {
      const { reply, transfer } = handle(msg);
      port.postMessage(reply, transfer);
    } catch (err) {
      port.postMessage({ id: msg.id, error: (err as Error)?.message ?? String(err) });
    }
  });
}
