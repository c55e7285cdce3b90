/**
 * What every namespace of an open Clonebox shares: the home, where warnings go, and the operations in
 * flight (close() aborts and awaits them, so it releases everything the instance started).
 */
import { CloneboxError } from '../errors.js';
import type { Home } from '../store/home.js';
import type { RecordsWatch } from '../store/records-watch.js';
import type { Warning, WarningCallback } from './types.js';

export class Session {
  private closed = false;
  private readonly stop = new AbortController();
  private readonly running = new Set<Promise<unknown>>();
  /** What close() also stops: resources a call handed out that outlive it (a private DHT). */
  private readonly closers: (() => Promise<void>)[] = [];
  /** Warnings nobody took (no onWarning given to open() nor to the call). */
  readonly kept: Warning[] = [];
  /**
   * Calls that may have changed the home, counted as each ends: part of cb.snapshots.stamp, which
   * otherwise learns of changes from inotify, and so only once the event loop has turned.
   */
  changes = 0;
  /** The records watch behind cb.snapshots.stamp (made by its first call, closed by close()). */
  records: RecordsWatch | null = null;

  constructor(
    readonly home: Home,
    private readonly onWarning: WarningCallback | undefined,
  ) {}

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Runs one call: refused after close(), counted until it settles. A call that is not `readOnly`
   * counts as a change when it ends (before its caller resumes).
   */
  run<T>(fn: () => Promise<T>, readOnly = false): Promise<T> {
    if (this.closed) return Promise.reject(CloneboxError.USAGE('this Clonebox is closed', { hint: 'open another with Clonebox.open()' }));
    const p = readOnly
      ? fn()
      : (async () => {
          try {
            return await fn();
          } finally {
            this.changes++;
          }
        })();
    this.running.add(p);
    const forget = () => {
      this.running.delete(p);
    };
    p.then(forget, forget);
    return p;
  }

  /** The call's signal joined with close()'s: either stops the operation. */
  signal(own: AbortSignal | undefined): AbortSignal {
    return own ? AbortSignal.any([own, this.stop.signal]) : this.stop.signal;
  }

  /** A warnings sink for one call: its own callback, else open()'s, else kept. */
  warner(own: WarningCallback | undefined, code: Warning['code'] = 'WARNING'): (message: string) => void {
    return (message) => this.warn({ code, message }, own);
  }

  warn(w: Warning, own?: WarningCallback): void {
    const fn = own ?? this.onWarning;
    if (fn) fn(w);
    else this.kept.push(w);
  }

  onClose(fn: () => Promise<void>): void {
    this.closers.push(fn);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stop.abort();
    this.records?.close();
    await Promise.allSettled([...this.running]);
    await Promise.allSettled(this.closers.map((fn) => fn()));
  }
}
