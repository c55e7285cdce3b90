/**
 * The guest disk as byte sources: a cached view of one state of a disk (through the qcow2 chain
 * reader) and bounded windows on it (partitions). Every read is checked against the window, so an
 * offset taken from guest metadata can never reach outside the partition it describes.
 */

/**
 * Guest metadata that cannot be right (a bad magic, an offset past the partition, a loop). It never
 * leaves the guest room: the partition's result carries it as a warning.
 */
export class GuestFormatError extends Error {
  override readonly name = 'GuestFormatError';
}

export interface ByteSource {
  readonly size: number;
  /** Bytes [offset, offset+length): a buffer the caller owns. Throws GuestFormatError outside the source. */
  read(offset: number, length: number): Promise<Buffer>;
}

/** Read granularity and cache entry of the disk view: one qcow2 cluster at the default size. */
const CHUNK = 64 * 1024;
/** Chunks kept (16 MiB): metadata blocks (inode tables, directories) are read repeatedly. */
const CACHE_CHUNKS = 256;

/** Reads guest bytes into a buffer: the qcow2 chain reader (src/qcow2/chain-reader.ts) is one. */
export interface GuestReader {
  readInto(offset: number, length: number, buf: Buffer): Promise<void>;
}

/** One state of a whole disk, read through the chain reader in cached chunks. */
export class DiskView implements ByteSource {
  private readonly cache = new Map<number, Promise<Buffer>>();
  /** Bytes read from the chain (for the bench and tests: the cost follows the change). */
  bytesRead = 0;

  constructor(
    private readonly reader: GuestReader,
    readonly size: number,
  ) {}

  private chunk(index: number): Promise<Buffer> {
    const hit = this.cache.get(index);
    if (hit) {
      this.cache.delete(index); // re-insert: Map order is the LRU order
      this.cache.set(index, hit);
      return hit;
    }
    const off = index * CHUNK;
    const len = Math.min(CHUNK, this.size - off);
    const buf = Buffer.allocUnsafe(len);
    this.bytesRead += len;
    const p = this.reader.readInto(off, len, buf).then(() => buf);
    p.catch(() => this.cache.delete(index));
    this.cache.set(index, p);
    if (this.cache.size > CACHE_CHUNKS) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    return p;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this.size, offset, length, 'disk');
    const out = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const c = await this.chunk(Math.floor(pos / CHUNK));
      const inChunk = pos % CHUNK;
      const n = Math.min(c.length - inChunk, length - done);
      c.copy(out, done, inChunk, inChunk + n);
      done += n;
    }
    return out;
  }
}

/** A window [start, start+size) of another source: a partition. */
export class Window implements ByteSource {
  constructor(
    private readonly src: ByteSource,
    readonly start: number,
    readonly size: number,
  ) {}

  read(offset: number, length: number): Promise<Buffer> {
    checkRange(this.size, offset, length, 'partition');
    return this.src.read(this.start + offset, length);
  }
}

function checkRange(size: number, offset: number, length: number, what: string): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new GuestFormatError(`a read at byte ${offset} (+${length}) points past the end of the ${what} (${size} bytes)`);
  }
}
