/**
 * A small pool of worker threads for hashing and zstd (zstd-napi's calls block their thread, so the
 * only way to use every core is one thread per core). Requests carry ids; replies resolve them. A batch
 * hashed by a worker is compressed by the same worker (its bytes stay there), so callers pick a worker
 * for `hash` and pass the same one to `compress`.
 *
 * When the worker script cannot be found (running from TypeScript sources without a build), the same
 * functions run on the calling thread: slower, same results.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CloneboxError } from '../errors.js';
import type { WorkerReply, WorkerRequest } from './worker.js';

function workerScript(): string | null {
  const here = fileURLToPath(import.meta.url);
  const js = path.join(path.dirname(here), 'worker.js');
  if (here.endsWith('.js') && existsSync(js)) return js;
  // Running from sources (vitest): use the compiled worker when the project is built.
  const root = path.resolve(path.dirname(here), '..', '..');
  const dist = path.join(root, 'dist', 'src', 'content', 'worker.js');
  return existsSync(dist) ? dist : null;
}

interface Slot {
  worker: Worker | null;
  busy: number;
}

export class WorkerPool {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, { resolve: (r: WorkerReply) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private failure: Error | null = null;
  private inline: ((m: WorkerRequest) => WorkerReply) | null = null;

  private constructor() {}

  /** `size` workers (default: one per core, at most 8). */
  static async start(size = Math.max(1, Math.min(8, os.availableParallelism()))): Promise<WorkerPool> {
    const pool = new WorkerPool();
    const script = workerScript();
    if (!script || process.env.CLONEBOX_BUNDLE_INLINE === '1') {
      pool.inline = (await import('./worker.js')).handleInline;
      pool.slots.push({ worker: null, busy: 0 });
      return pool;
    }
    for (let i = 0; i < size; i++) {
      const w = new Worker(script, { workerData: { cloneboxBundleWorker: true } });
      w.unref();
      w.on('message', (r: WorkerReply) => pool.onReply(r));
      w.on('error', (err) => pool.fail(err));
      w.on('exit', (code) => {
        if (code !== 0) pool.fail(new Error(`bundle worker exited with code ${code}`));
      });
      pool.slots.push({ worker: w, busy: 0 });
    }
    return pool;
  }

  get size(): number {
    return this.slots.length;
  }

  /** The worker with the fewest requests in flight. */
  pick(): number {
    let best = 0;
    for (let i = 1; i < this.slots.length; i++) if (this.slots[i]!.busy < this.slots[best]!.busy) best = i;
    return best;
  }

  private onReply(r: WorkerReply): void {
    const p = this.pending.get(r.id);
    if (!p) return;
    this.pending.delete(r.id);
    if ('error' in r) p.reject(new CloneboxError('INTERNAL', `bundle worker failed: ${r.error}`));
    else p.resolve(r);
  }

  private fail(err: Error): void {
    this.failure ??= new CloneboxError('INTERNAL', `bundle worker failed: ${err.message}`, { cause: err });
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  newId(): number {
    return this.nextId++;
  }

  /** Sends a request (with `id` from newId()) to worker `slot`; resolves with its reply. */
  request(slot: number, msg: WorkerRequest, transfer: ArrayBuffer[] = []): Promise<WorkerReply> {
    if (this.failure) return Promise.reject(this.failure);
    const s = this.slots[slot]!;
    if (this.inline) {
      try {
        return Promise.resolve(this.inline(msg));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    s.busy++;
    return new Promise<WorkerReply>((resolve, reject) => {
      this.pending.set(msg.id, {
        resolve: (r) => {
          s.busy--;
          resolve(r);
        },
        reject: (e) => {
          s.busy--;
          reject(e);
        },
      });
      s.worker!.postMessage(msg, transfer);
    });
  }

  private closing: Promise<void> | null = null;

  /**
   * Ends the workers; every call gets the same promise, so a caller done with the pool early can
   * start the termination while it finishes other work, and the owner's close() still waits for it.
   */
  close(): Promise<void> {
    this.closing ??= Promise.all(this.slots.map((s) => s.worker?.terminate())).then(() => {
      this.slots.length = 0;
    });
    return this.closing;
  }
}
