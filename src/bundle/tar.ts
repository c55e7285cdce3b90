/**
 * The tar layer of a bundle (tar-stream). Writing: plain ustar regular files, one per entry, with
 * backpressure (an entry's promise resolves once the output has taken it). Reading: a strict reader
 * for archives we did not write ourselves. Every header is judged before its data is read: only
 * regular files, only names the caller expects at that position (so no absolute paths, no `..`, no
 * links, no duplicates, no surprises), no pax extensions, and a size below the caller's limit for that
 * entry, checked before a byte of it is buffered.
 */
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';

/** An entry being read: its header and a stream of its bytes (tar-stream's Source, not exported by its types). */
type Source = AsyncIterable<Buffer> & { header: tar.Header };
import { CloneboxError } from '../errors.js';

export class TarWriter {
  private readonly pack = tar.pack();
  private readonly done: Promise<void>;
  private failed: Error | null = null;
  /** Archive bytes produced so far (headers, data, padding). */
  bytes = 0;

  constructor(out: Writable, private readonly mtime: Date) {
    this.done = pipeline(this.pack as unknown as Readable, out).catch((err: Error) => {
      this.failed = err;
      throw err;
    });
    this.done.catch(() => undefined); // observed through add()/finish()
  }

  async add(name: string, data: Buffer): Promise<void> {
    if (this.failed) throw this.failed;
    // ustar: a 512-byte header, the data, zero padding to the next 512 bytes (names here are short).
    this.bytes += 512 + Math.ceil(data.length / 512) * 512;
    await new Promise<void>((resolve, reject) => {
      this.pack.entry({ name, size: data.length, mode: 0o644, mtime: this.mtime, uid: 0, gid: 0, type: 'file' }, data, (err?: Error | null) => {
        if (err) reject(err);
        else resolve();
      });
    });
    if (this.failed) throw this.failed;
  }

  /** Writes the end-of-archive marker and waits until the output has everything. */
  async finish(): Promise<void> {
    this.pack.finalize();
    this.bytes += 1024; // end-of-archive: two zero blocks
    await this.done;
  }

  abort(err: Error): void {
    this.pack.destroy(err);
  }
}

export interface TarEntry {
  name: string;
  data: Buffer;
}

/**
 * What the caller expects next: given the entry's name, return the most bytes it may hold (entries
 * with any other name are refused by throwing from here).
 */
export type EntryGate = (name: string) => number;

function bad(what: string, file: string): CloneboxError {
  return new CloneboxError('BUNDLE_CORRUPT', `bundle is damaged or not a clonebox bundle: ${what}, ${file}`, {
    hint: 'the file was changed or cut short after export, or is something else; get an intact copy',
  });
}

/**
 * Reads the archive entry by entry. `next(gate)` returns the next entry's bytes, or null at the end of
 * the archive; it rejects links, directories, pax headers and anything the gate refuses.
 */
export class TarReader {
  private readonly extract = tar.extract();
  private readonly iter: AsyncIterator<Source>;
  private streamError: Error | null = null;
  bytesIn = 0;

  constructor(private readonly input: Readable, private readonly file: string) {
    input.on('data', (b: Buffer) => {
      this.bytesIn += b.length;
    });
    input.on('error', (err) => {
      this.streamError = err;
      this.extract.destroy(err);
    });
    input.pipe(this.extract as unknown as Writable);
    this.iter = (this.extract as unknown as AsyncIterable<Source>)[Symbol.asyncIterator]();
  }

  async next(gate: EntryGate): Promise<TarEntry | null> {
    let res: IteratorResult<Source>;
    try {
      res = await this.iter.next();
    } catch (err) {
      throw this.translate(err);
    }
    if (res.done) return null;
    const entry = res.value;
    const h = entry.header;
    const name = h.name;
    if (h.type !== 'file') throw bad(`entry ${JSON.stringify(name)} is a ${h.type}, not a regular file`, this.file);
    if (h.pax) throw bad(`entry ${JSON.stringify(name)} has pax extended headers`, this.file);
    if (h.linkname) throw bad(`entry ${JSON.stringify(name)} names a link target`, this.file);
    if (name.startsWith('/') || name.split('/').includes('..')) throw bad(`entry name ${JSON.stringify(name)} points outside the archive`, this.file);
    const limit = gate(name);
    if (!Number.isSafeInteger(h.size) || h.size < 0 || h.size > limit) {
      throw bad(`entry ${JSON.stringify(name)} claims ${h.size} bytes (at most ${limit} expected)`, this.file);
    }
    const data = Buffer.allocUnsafe(h.size);
    let got = 0;
    try {
      for await (const chunk of entry as AsyncIterable<Buffer>) {
        if (got + chunk.length > data.length) throw bad(`entry ${JSON.stringify(name)} holds more bytes than its header says`, this.file);
        chunk.copy(data, got);
        got += chunk.length;
      }
    } catch (err) {
      throw this.translate(err);
    }
    if (got !== h.size) throw bad(`entry ${JSON.stringify(name)} is cut short (${got} of ${h.size} bytes)`, this.file);
    return { name, data };
  }

  private translate(err: unknown): Error {
    if (err instanceof CloneboxError) return err;
    if (this.streamError) {
      const e = this.streamError as NodeJS.ErrnoException;
      return new CloneboxError('IO', `cannot read bundle: ${e.message}, ${this.file}`, { cause: e });
    }
    const msg = (err as Error)?.message ?? String(err);
    if (/unexpected end/i.test(msg)) return bad('the archive ends in the middle of an entry', this.file);
    return bad(`invalid tar data (${msg})`, this.file);
  }

  /** Stops reading (after an error or when done). */
  destroy(): void {
    this.input.unpipe(this.extract as unknown as Writable);
    this.extract.destroy();
    this.input.destroy();
  }
}
