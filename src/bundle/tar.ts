/**
 * The tar layer of a bundle: plain ustar regular files, one per entry, written and read here.
 * (tar-stream was the first choice; it is not used because its extractor is lenient where we must not
 * be — it follows pax and GNU headers and skips padding and trailing blocks unseen — and its packer
 * cannot tell when an entry's buffers have reached the file, which buffer reuse needs.) The writer
 * produces what `tar -tf` lists; the reader is a small strict parser that accepts only what the writer
 * produces: only regular files, only names the caller expects at that position (so no
 * absolute paths, no `..`, no links, no duplicates, no surprises), a size below the caller's limit for
 * that entry checked before a byte of it is buffered, zero padding, and nothing after the end.
 */
import type { Readable, Writable } from 'node:stream';

import { CloneboxError } from '../errors.js';
import { isDirectSource } from './input.js';

/** A ustar header for a regular file (the only kind a bundle holds). */
export function ustarHeader(name: string, size: number, mtime: Date): Buffer {
  const h = Buffer.alloc(512);
  if (Buffer.byteLength(name) > 100) throw new CloneboxError('INTERNAL', `tar entry name too long: ${name}`);
  h.write(name, 0, 'latin1');
  h.write('0000644\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write(
    `${Math.max(0, Math.floor(mtime.getTime() / 1000))
      .toString(8)
      .padStart(11, '0')}\0`,
    136,
    'latin1',
  );
  h.write('0', 156, 'latin1');
  h.write('ustar\x0000', 257, 'latin1');
  h.write('0000000\0', 329, 'latin1');
  h.write('0000000\0', 337, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += h[i]!;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

const ZEROS = Buffer.alloc(1024);

/**
 * Writes the archive to a stream, with backpressure: `add()` resolves once the stream can take more,
 * and returns a promise of the moment the entry's bytes have really been written (after which the
 * caller may reuse its buffers).
 */
export class TarWriter {
  private failure: Error | null = null;
  private readonly onError = (err: Error) => {
    this.failure ??= err;
  };
  /** Archive bytes produced so far (headers, data, padding). */
  bytes = 0;

  constructor(
    private readonly out: Writable,
    private readonly mtime: Date,
    private readonly endStream = true,
  ) {
    out.on('error', this.onError);
  }

  private write(b: Buffer): Promise<void> {
    this.bytes += b.length;
    return new Promise<void>((resolve, reject) => {
      this.out.write(b, (err) => (err ? reject(err) : resolve()));
    });
  }

  private async drain(): Promise<void> {
    if (!this.out.writableNeedDrain) return;
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        this.out.off('drain', done);
        this.out.off('error', done);
        if (err) reject(err);
        else resolve();
      };
      this.out.on('drain', done);
      this.out.on('error', done);
    });
  }

  /** Adds one entry whose content is `data` (or its parts, one after the other). */
  async add(name: string, data: Buffer | Buffer[]): Promise<{ written: Promise<void> }> {
    if (this.failure) throw this.failure;
    const parts = Array.isArray(data) ? data : [data];
    const size = parts.reduce((a, p) => a + p.length, 0);
    const writes = [this.write(ustarHeader(name, size, this.mtime)), ...parts.map((p) => this.write(p))];
    const pad = (512 - (size % 512)) % 512;
    if (pad) writes.push(this.write(ZEROS.subarray(0, pad)));
    const written = Promise.all(writes).then(() => undefined);
    written.catch(() => undefined);
    await this.drain();
    if (this.failure) throw this.failure;
    return { written };
  }

  /** Writes the end-of-archive marker and waits until the output has everything. */
  async finish(): Promise<void> {
    if (this.failure) throw this.failure;
    await this.write(ZEROS);
    if (this.endStream) {
      await new Promise<void>((resolve, reject) => {
        this.out.end((err?: Error | null) => (err ? reject(err) : resolve()));
      });
    }
    if (this.failure) throw this.failure;
  }

  abort(err: Error): void {
    this.failure ??= err;
    if (this.endStream) this.out.destroy();
  }
}

export interface TarEntry {
  name: string;
  data: Buffer;
  /** Where the entry's data starts in the archive. */
  offset: number;
}

/**
 * What the caller expects next: given the entry's name, return the most bytes it may hold (entries
 * with any other name are refused by throwing from here).
 */
export type EntryGate = (name: string) => number;

function bad(what: string, file: string): CloneboxError {
  return new CloneboxError('BUNDLE_CORRUPT', `bundle is damaged or was modified: ${what}, ${file}`, {
    hint: 'the file changed after export (or was cut short), or is not a clonebox bundle; get an intact copy',
  });
}

const DIRECT_MIN = 64 * 1024;
const DIRECT_PIECE = 4 * 1024 * 1024;

/** Exactly `n` bytes from a stream of chunks, or fewer at its end. */
class ByteQueue {
  private readonly chunks: Buffer[] = [];
  private head = 0;
  /** Bytes handed out so far: the stream offset of the next byte. */
  consumed = 0;
  private buffered = 0;
  private ended = false;
  private readonly it: AsyncIterator<Buffer>;

  /**
   * `direct`: reads straight into the caller's buffer at the current position (a file); used for
   * large reads once the queued chunks are used up, so entry data is not copied twice.
   */
  constructor(
    input: AsyncIterable<Buffer>,
    private readonly direct: ((dst: Buffer, at: number, n: number) => number) | null = null,
  ) {
    this.it = input[Symbol.asyncIterator]();
  }

  private async fill(n: number): Promise<void> {
    while (this.buffered < n && !this.ended) {
      const r = await this.it.next();
      if (r.done) this.ended = true;
      else if (r.value.length) {
        this.chunks.push(r.value);
        this.buffered += r.value.length;
      }
    }
  }

  /** Copies the next `n` bytes into `dst` at `at`; returns how many there were. */
  async readInto(dst: Buffer, at: number, n: number): Promise<number> {
    let done = 0;
    while (done < n) {
      if (this.direct && this.buffered === 0 && !this.ended && n - done >= DIRECT_MIN) {
        // Pieces of a few MiB, yielding in between so that worker replies are not held up.
        const got = this.direct(dst, at + done, Math.min(n - done, DIRECT_PIECE));
        if (got === 0) {
          this.ended = true;
          break;
        }
        this.consumed += got;
        done += got;
        if (done < n) await new Promise<void>((r) => setImmediate(r));
        continue;
      }
      await this.fill(1);
      if (this.buffered === 0) break;
      const c = this.chunks[0]!;
      const take = Math.min(n - done, c.length - this.head);
      c.copy(dst, at + done, this.head, this.head + take);
      this.head += take;
      this.buffered -= take;
      this.consumed += take;
      done += take;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return done;
  }

  /** Whether everything left in the stream is zero bytes (tar record padding). */
  async restIsZero(): Promise<boolean> {
    for (;;) {
      await this.fill(1);
      if (this.buffered === 0) return true;
      const c = this.chunks.shift()!;
      for (let i = this.head; i < c.length; i++) if (c[i] !== 0) return false;
      this.buffered -= c.length - this.head;
      this.head = 0;
    }
  }
}

const USTAR = Buffer.from('ustar\x0000', 'latin1');

function octal(h: Buffer, off: number, len: number): number {
  // Only plain octal digits, space/NUL terminated: base-256 sizes (giant entries) are refused here.
  const s = h
    .subarray(off, off + len)
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '');
  if (!/^[0-7]{1,12}$/.test(s)) return -1;
  return parseInt(s, 8);
}

/**
 * A strict reader for archives we did not write ourselves: plain ustar regular files only. Every header
 * is judged before its data is read (checksum, magic, type, name, size against the caller's limit);
 * link targets, prefixes, pax/GNU extensions and base-256 sizes are refused, the padding after each
 * entry must be zero and so must everything after the end-of-archive marker, so that a modified byte
 * anywhere in the file is noticed, not only in the entries' data.
 */
export class TarReader {
  private readonly q: ByteQueue;
  private finished = false;
  bytesIn = 0;

  /**
   * `input`: a stream, or any async iterable of chunks (pulled one at a time; a chunk may be reused by
   * its producer once the next one is asked for — every byte is copied out before that).
   */
  /**
   * `firstName`: the name the archive's first entry must have; a file whose first block is not that
   * entry's header is NOT_A_BUNDLE rather than a damaged archive (null: no such check).
   */
  constructor(
    private readonly input: Readable | AsyncIterable<Buffer>,
    private readonly file: string,
    private firstName: string | null = null,
  ) {
    const self = this;
    const direct = isDirectSource(input)
      ? (dst: Buffer, at: number, n: number) => {
          const got = input.readDirect(dst, at, n);
          self.bytesIn += got;
          return got;
        }
      : null;
    this.q = new ByteQueue(
      (async function* () {
        try {
          for await (const chunk of input as AsyncIterable<Buffer>) {
            self.bytesIn += chunk.length;
            yield chunk;
          }
        } catch (err) {
          throw new CloneboxError('IO', `cannot read bundle: ${(err as Error).message}, ${file}`, { cause: err });
        }
      })(),
      direct,
    );
  }

  private async block(what: string): Promise<Buffer> {
    const b = Buffer.alloc(512);
    const n = await this.q.readInto(b, 0, 512);
    if (this.firstName !== null) {
      // The first block decides whether this is one of our archives at all: a file that does not start
      // with the tar header of the expected first entry is something else (a disk image, a text file,
      // an empty file), not a damaged bundle (issue 17); a cut or changed bundle still starts so.
      const want = Buffer.from(`${this.firstName}\0`, 'latin1');
      this.firstName = null;
      if (n < want.length || !b.subarray(0, want.length).equals(want)) {
        throw new CloneboxError('NOT_A_BUNDLE', `not a clonebox bundle (${n === 0 ? 'an empty file' : 'it does not start as one'}), ${this.file}`, {
          hint: 'give the file `clonebox snapshot export` wrote',
        });
      }
    }
    if (n === 0 && what === 'header') throw bad('the archive ends without its end-of-archive marker (cut short?)', this.file);
    if (n !== 512) throw bad(`the archive ends inside a ${what} (cut short?)`, this.file);
    return b;
  }

  /** The next entry, or null after the end-of-archive marker (which must end the file). */
  async next(gate: EntryGate, alloc: (size: number) => Buffer = (n) => Buffer.allocUnsafe(n)): Promise<TarEntry | null> {
    if (this.finished) return null;
    const h = await this.block('header');
    if (h.every((x) => x === 0)) {
      const second = await this.block('end-of-archive marker');
      if (!second.every((x) => x === 0)) throw bad('data after an empty tar header', this.file);
      if (!(await this.q.restIsZero())) throw bad('data after the end of the archive', this.file);
      this.finished = true;
      return null;
    }
    const stored = octal(h, 148, 8);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
    if (stored !== sum) throw bad('a tar header checksum does not match', this.file);
    const rawName = h.subarray(0, 100);
    const nul = rawName.indexOf(0);
    const name = rawName.subarray(0, nul < 0 ? 100 : nul).toString('latin1');
    const shown = JSON.stringify(name);
    if (!h.subarray(257, 265).equals(USTAR)) throw bad(`entry ${shown} is not a plain ustar header`, this.file);
    const type = String.fromCharCode(h[156]!);
    if (type === 'x' || type === 'g' || type === 'L' || type === 'K') throw bad(`entry ${shown} uses pax or GNU extensions`, this.file);
    if (type === '1' || type === '2') throw bad(`entry ${shown} is a link`, this.file);
    if (type !== '0' && type !== '\0') throw bad(`entry ${shown} is not a regular file (type ${JSON.stringify(type)})`, this.file);
    if (h[157] !== 0) throw bad(`entry ${shown} names a link target`, this.file);
    if (h[345] !== 0) throw bad(`entry ${shown} has a name prefix`, this.file);
    if (name.startsWith('/') || name.split('/').includes('..')) throw bad(`entry name ${shown} points outside the archive`, this.file);
    const size = octal(h, 124, 12);
    if (size < 0) throw bad(`entry ${shown} has an invalid or oversized size field`, this.file);
    const limit = gate(name);
    if (size > limit) throw bad(`entry ${shown} claims ${size} bytes (at most ${limit} expected)`, this.file);
    const data = alloc(size);
    const offset = this.q.consumed;
    const got = await this.q.readInto(data, 0, size);
    if (got !== size) throw bad(`entry ${shown} is cut short (${got} of ${size} bytes)`, this.file);
    const padLen = (512 - (size % 512)) % 512;
    if (padLen) {
      const pad = Buffer.alloc(padLen);
      if ((await this.q.readInto(pad, 0, padLen)) !== padLen) throw bad(`the archive ends in the padding of ${shown}`, this.file);
      if (!pad.every((x) => x === 0)) throw bad(`the padding after entry ${shown} is not zero`, this.file);
    }
    return { name, data, offset };
  }

  /** Stops reading (after an error or when done). */
  destroy(): void {
    const i = this.input as { destroy?: () => void; return?: (v: undefined) => Promise<unknown> };
    if (typeof i.destroy === 'function') i.destroy();
    else if (typeof i.return === 'function') i.return(undefined).catch(() => undefined);
  }
}
