/**
 * The home's event log, <home>/events.log: one JSON line per snapshot made, restored, changed or
 * deleted, appended by whichever process did it (the CLI, a scheduler, the REST service). A long-running
 * reader (`clonebox serve`) tails it to tell its clients about changes it did not make itself.
 *
 * Appends use O_APPEND and one write() per line, so lines from concurrent processes never interleave on
 * a local filesystem. The log is capped: an append that finds it above ROTATE_BYTES renames it to
 * events.log.1 first (replacing the previous one). A tail keeps its file descriptor open, so it reads
 * the rest of a rotated log before it moves to the new one and loses nothing.
 *
 * The log is a notification channel, not a record: the snapshot records stay the truth, and an
 * operation that committed is not failed by an append that could not be written.
 */
import { type FSWatcher, watch } from 'node:fs';
import { type FileHandle, open, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import { ensureHome, type Home } from './home.js';

export interface HomeEvent {
  /** ISO-8601, when the change committed. */
  time: string;
  vm: string;
  snapshot: string;
  /** created, restored (became current again), changed (merged: new parent, size), deleted. */
  op: 'created' | 'restored' | 'changed' | 'deleted';
  /** The process that made the change. */
  pid: number;
}

const LOG = 'events.log';
/** Above this the next append starts a new log (a reader keeps up within seconds; this is days of changes). */
const ROTATE_BYTES = 4 * 1024 * 1024;
/** A line longer than this is not one we wrote: it is skipped, not buffered without bound. */
const MAX_LINE = 64 * 1024;
const OPS = new Set(['created', 'restored', 'changed', 'deleted']);

function eventLogPath(home: Home): string {
  return path.join(home.root, LOG);
}

/** Appends events (one write for all of them). Returns an error message instead of throwing. */
export async function appendEvents(home: Home, events: Omit<HomeEvent, 'pid' | 'time'>[]): Promise<string | null> {
  if (events.length === 0) return null;
  const file = eventLogPath(home);
  const time = new Date().toISOString();
  const data = events.map((e) => `${JSON.stringify({ time, vm: e.vm, snapshot: e.snapshot, op: e.op, pid: process.pid })}\n`).join('');
  try {
    await ensureHome(home);
    const size = await stat(file).then(
      (s) => s.size,
      () => 0,
    );
    if (size > ROTATE_BYTES) await rename(file, `${file}.1`).catch(() => undefined);
    const fh = await open(file, 'a', 0o600);
    try {
      await fh.write(data);
    } finally {
      await fh.close();
    }
    return null;
  } catch (err) {
    return `event log not written (${(err as Error).message}), ${file}`;
  }
}

function parseLine(line: string): HomeEvent | null {
  if (line.length === 0 || line.length > MAX_LINE) return null;
  try {
    const v = JSON.parse(line) as Partial<HomeEvent>;
    if (typeof v.time !== 'string' || typeof v.vm !== 'string' || typeof v.snapshot !== 'string' || typeof v.op !== 'string' || !OPS.has(v.op)) return null;
    return { time: v.time, vm: v.vm, snapshot: v.snapshot, op: v.op, pid: typeof v.pid === 'number' ? v.pid : 0 };
  } catch {
    return null;
  }
}

/**
 * Follows the log from its end at the time of open(): read() returns the events appended since the
 * last read, in order; onAppend's callback runs (debounced by the event loop) when the log changes.
 */
export class EventTail {
  private fh: FileHandle | null = null;
  private ino = -1;
  private offset = 0;
  private partial = '';
  private watcher: FSWatcher | null = null;
  private reading: Promise<HomeEvent[]> | null = null;

  private constructor(private readonly file: string) {}

  static async open(home: Home): Promise<EventTail> {
    await ensureHome(home);
    const t = new EventTail(eventLogPath(home));
    await t.reopen(true);
    return t;
  }

  /** Opens the file at the path; atEnd skips what is already there. */
  private async reopen(atEnd: boolean): Promise<boolean> {
    let fh: FileHandle;
    try {
      fh = await open(this.file, 'r');
    } catch {
      return false; // no log yet: the first append creates it
    }
    const st = await fh.stat();
    await this.fh?.close();
    this.fh = fh;
    this.ino = st.ino;
    this.offset = atEnd ? st.size : 0;
    this.partial = '';
    return true;
  }

  /** Calls fn when the log may have grown (the home directory is watched, so a rotation is seen too). */
  onAppend(fn: () => void): void {
    this.watcher?.close();
    this.watcher = watch(path.dirname(this.file), (_type, name) => {
      if (name === null || name === LOG || name === `${LOG}.1`) fn();
    });
    this.watcher.on('error', () => undefined);
  }

  /** The events appended since the last read (reads are serialised). */
  read(): Promise<HomeEvent[]> {
    const prev = this.reading ?? Promise.resolve([]);
    const next = prev.then(() => this.readOnce());
    this.reading = next.catch(() => []);
    return next;
  }

  private async readOnce(): Promise<HomeEvent[]> {
    const out: HomeEvent[] = [];
    if (!this.fh && !(await this.reopen(false))) return out;
    out.push(...(await this.drain()));
    // Rotated (or removed and recreated): the old descriptor is drained above, then the new file from its start.
    const st = await stat(this.file).catch(() => null);
    if (st && st.ino !== this.ino && (await this.reopen(false))) out.push(...(await this.drain()));
    return out;
  }

  private async drain(): Promise<HomeEvent[]> {
    const fh = this.fh;
    if (!fh) return [];
    const out: HomeEvent[] = [];
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, this.offset);
      if (bytesRead === 0) break;
      this.offset += bytesRead;
      const text = this.partial + buf.subarray(0, bytesRead).toString('utf8');
      const lines = text.split('\n');
      this.partial = lines.pop() ?? '';
      if (this.partial.length > MAX_LINE) this.partial = '';
      for (const l of lines) {
        const e = parseLine(l);
        if (e) out.push(e);
      }
    }
    return out;
  }

  async close(): Promise<void> {
    this.watcher?.close();
    this.watcher = null;
    await this.reading?.catch(() => undefined);
    await this.fh?.close();
    this.fh = null;
  }
}
