/** Reading a disk as the VM sees it, through its backing chain, for diff, rebase and the sync sharer's frames. */
import { type FileHandle, open } from 'node:fs/promises';
import { ioError } from '../errors.js';
import { type BlockingReads, preadSync } from './blocking-reads.js';
import type { Chain } from './chain.js';

/**
 * Reads guest bytes of a chain straight into a caller's buffer: every piece of the range is read
 * from the layer that supplies it with one pread into its place (no per-piece buffers, no copies),
 * all pieces at once. Compressed clusters go through the reader (inflate) and are copied.
 */
export class ChainReader {
  private readonly fhs = new Map<string, Promise<FileHandle>>();

  /**
   * `blocking`: when pieces are read with a blocking pread on this thread (blocking-reads.ts; may be
   * shared by the readers of several chains); without it every read goes to the thread pool.
   */
  constructor(
    readonly chain: Chain,
    private readonly blocking: BlockingReads | null = null,
  ) {}

  private fh(file: string): Promise<FileHandle> {
    let p = this.fhs.get(file);
    if (!p) {
      p = open(file, 'r').catch((err) => {
        throw ioError(err, 'cannot open image', file);
      });
      this.fhs.set(file, p);
    }
    return p;
  }

  /** Host bytes [pos, pos+len) of `file` into buf[dst..]; past the end of the file reads as zeros. */
  private async pread(file: string, buf: Buffer, dst: number, len: number, pos: number): Promise<void> {
    const fh = await this.fh(file);
    if (this.blocking?.wants(len)) {
      this.blocking.run(() => preadSync(fh.fd, buf.subarray(dst, dst + len), pos, file));
      return;
    }
    let done = 0;
    while (done < len) {
      const { bytesRead } = await fh.read(buf, dst + done, len - done, pos + done).catch((err) => {
        throw ioError(err, 'cannot read image', file);
      });
      if (bytesRead === 0) {
        buf.fill(0, dst + done, dst + len);
        return;
      }
      done += bytesRead;
    }
  }

  /** The guest bytes of [offset, offset+length) into buf[0..length). */
  async readInto(offset: number, length: number, buf: Buffer): Promise<void> {
    const vs = this.chain.virtualSize;
    if (offset + length > vs) buf.fill(0, Math.max(0, vs - offset), length); // past this chain's disk
    const jobs: Promise<void>[] = [];
    try {
      for await (const r of this.chain.resolve(offset, offset + length)) {
        const dst = r.offset - offset;
        const run = r.run;
        if (r.layer < 0 || run === null || run.kind !== 'data') {
          buf.fill(0, dst, dst + r.length);
          continue;
        }
        const layer = this.chain.layers[r.layer]!;
        if (run.compressed || run.hostOffset === undefined) jobs.push(layer.readRun(run).then((d) => void d.copy(buf, dst)));
        else jobs.push(this.pread(layer.path, buf, dst, r.length, run.hostOffset));
      }
    } catch (err) {
      await Promise.allSettled(jobs); // nothing left running (or rejecting unobserved) behind the error
      throw err;
    }
    await Promise.all(jobs);
  }

  async close(): Promise<void> {
    for (const p of this.fhs.values()) await (await p.catch(() => null))?.close().catch(() => undefined);
  }
}
