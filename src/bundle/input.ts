/**
 * Where a bundle is read from: a file, or stdin (`-`). A file is read with blocking reads on the
 * calling thread: a bundle is read start to end, nothing else waits on this thread meanwhile, and a
 * thread-pool round trip per chunk costs more than the copy from the page cache (much more on a busy
 * machine). The tar reader reads an entry's data straight into its destination (`readDirect`), so the
 * bytes are copied once, by the kernel; headers and padding come through the small chunks.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { CloneboxError, ioError } from '../errors.js';

/** A source the tar reader can also read into a buffer of its own choosing (see tar.ts). */
export interface DirectSource extends AsyncIterable<Buffer> {
  /** Reads up to `n` bytes at the current position into `dst` at `at`; 0 at the end. */
  readDirect(dst: Buffer, at: number, n: number): number;
}

export function isDirectSource(x: unknown): x is DirectSource {
  return typeof (x as Partial<DirectSource>).readDirect === 'function';
}

export interface BundleInput {
  stream: Readable | AsyncIterable<Buffer>;
  label: string;
  /** Bytes in the file (for progress), null for stdin. */
  size: number | null;
  /** The file's path, null for stdin. */
  file: string | null;
}

/** Opens the input: a file (its size known, for progress) or a stream (the CLI's stdin for '-'). */
export async function openInput(input: string | Readable): Promise<BundleInput> {
  if (typeof input !== 'string') return { stream: input, label: 'stdin', size: null, file: null };
  const file = path.resolve(input);
  let size: number;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new CloneboxError('USAGE', `not a file, ${file}`);
    size = st.size;
  } catch (err) {
    throw ioError(err, 'cannot read bundle', file);
  }
  return { stream: new FileChunks(file), label: file, size, file };
}

/**
 * A file as 64 KiB chunks (two buffers take turns: the tar reader copies a chunk out before it asks
 * for the next) or direct reads. The file is opened on first use and closed at the end, on an error,
 * or when the consumer stops early (`return()`).
 */
class FileChunks implements DirectSource {
  private fd: number | null = null;
  private done = false;
  private readonly bufs = [Buffer.allocUnsafe(64 * 1024), Buffer.allocUnsafe(64 * 1024)];
  private turn = 0;

  constructor(private readonly file: string) {}

  private open(): number {
    if (this.fd === null) {
      if (this.done) return -1;
      try {
        this.fd = openSync(this.file, 'r');
      } catch (err) {
        throw ioError(err, 'cannot read bundle', this.file);
      }
    }
    return this.fd;
  }

  /** Stops early (TarReader.destroy() after an error): the file is closed now, not at exit. */
  destroy(): void {
    this.close();
  }

  private close(): void {
    this.done = true;
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  readDirect(dst: Buffer, at: number, n: number): number {
    const fd = this.open();
    if (fd < 0) return 0;
    try {
      const got = readSync(fd, dst, at, n, null);
      if (got === 0) this.close();
      return got;
    } catch (err) {
      this.close();
      throw ioError(err, 'cannot read bundle', this.file);
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<Buffer> {
    return {
      next: async (): Promise<IteratorResult<Buffer>> => {
        const b = this.bufs[this.turn++ % 2]!;
        const n = this.readDirect(b, 0, b.length);
        if (n === 0) return { done: true, value: undefined };
        return { done: false, value: n === b.length ? b : b.subarray(0, n) };
      },
      return: async (): Promise<IteratorResult<Buffer>> => {
        this.close();
        return { done: true, value: undefined };
      },
    };
  }
}
