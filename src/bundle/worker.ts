/**
 * Worker-thread entry for the bundle pool (workers.ts): hashes batches, compresses frames, decodes
 * frames. A batch's bytes stay here between `hash` and `compress` so they cross threads only once.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { compressFrame, decodeFrame, hashBlocks } from './codec.js';
import type { Codec } from './format.js';

export type WorkerRequest =
  | { op: 'hash'; id: number; buf: ArrayBuffer; blocks: Uint32Array }
  | { op: 'compress'; id: number; select: Uint32Array; level: number }
  | { op: 'drop'; id: number }
  | { op: 'decode'; id: number; codec: Codec; stored: ArrayBuffer; offset: number; length: number; rawLength: number; lengths: Uint32Array };

export type WorkerReply =
  | { id: number; shas: ArrayBuffer }
  | { id: number; codec: Codec; rawLength: number; stored: ArrayBuffer; storedOffset: number; storedLength: number }
  | { id: number; dropped: true }
  | { id: number; raw: ArrayBuffer; shas: ArrayBuffer }
  | { id: number; bad: true }
  | { id: number; error: string };

const held = new Map<number, { buf: Uint8Array; blocks: Uint32Array }>();

function handle(msg: WorkerRequest): { reply: WorkerReply; transfer: ArrayBuffer[] } {
  switch (msg.op) {
    case 'hash': {
      const buf = new Uint8Array(msg.buf);
      held.set(msg.id, { buf, blocks: msg.blocks });
      const shas = hashBlocks(buf, msg.blocks);
      return { reply: { id: msg.id, shas: shas.buffer as ArrayBuffer }, transfer: [shas.buffer as ArrayBuffer] };
    }
    case 'compress': {
      const h = held.get(msg.id);
      if (!h) throw new Error(`no batch ${msg.id}`);
      held.delete(msg.id);
      const f = compressFrame(h.buf, h.blocks, msg.select, msg.level);
      const ab = f.stored.buffer as ArrayBuffer;
      return {
        reply: { id: msg.id, codec: f.codec, rawLength: f.rawLength, stored: ab, storedOffset: f.stored.byteOffset, storedLength: f.stored.length },
        transfer: [ab],
      };
    }
    case 'drop':
      held.delete(msg.id);
      return { reply: { id: msg.id, dropped: true }, transfer: [] };
    case 'decode': {
      const r = decodeFrame(msg.codec, new Uint8Array(msg.stored, msg.offset, msg.length), msg.rawLength, msg.lengths);
      if (!r) return { reply: { id: msg.id, bad: true }, transfer: [] };
      const rawAb = r.raw.buffer as ArrayBuffer;
      // A raw frame's bytes are a view into the transferred input: send that buffer back as is.
      if (r.raw.byteOffset !== 0 || r.raw.length !== rawAb.byteLength) {
        const copy = Buffer.from(new ArrayBuffer(r.raw.length));
        r.raw.copy(copy);
        return { reply: { id: msg.id, raw: copy.buffer as ArrayBuffer, shas: r.shas.buffer as ArrayBuffer }, transfer: [copy.buffer as ArrayBuffer, r.shas.buffer as ArrayBuffer] };
      }
      return { reply: { id: msg.id, raw: rawAb, shas: r.shas.buffer as ArrayBuffer }, transfer: [rawAb, r.shas.buffer as ArrayBuffer] };
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
