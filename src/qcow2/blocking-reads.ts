/**
 * When a reader may read on its own thread with a blocking pread instead of through the libuv thread
 * pool. From the page cache a blocking pread of a couple of MiB is a memory copy; an asynchronous one
 * costs the same copy plus a thread-pool round trip, and on a machine whose cores are busy the pool's
 * thread must first get a CPU, so the awaiting thread sits idle far longer than the copy takes. From
 * the disk it is the other way round: a blocking read stalls everything, several in flight beat one
 * at a time. So reads start blocking and turn asynchronous for good once enough of them went to the
 * disk.
 *
 * A read went to the disk when the process's block-input count (`process.resourceUsage().fsRead`,
 * getrusage's ru_inblock) grew during it. Its time says less: on a busy machine a page-cached read is
 * often preempted, and a rule on time had turned loaded exports asynchronous (bench/README.md). The
 * count is the whole process's, so another thread's disk reads can make the switch too; a wrong
 * switch only costs some waiting. What counts is a share (at least DISK_TO_SWITCH reads and a quarter
 * of all), not one: the kernel's read-ahead leaves most forward reads of a cold file in the cache.
 *
 * Used by HostReader (stream.ts: bundle export, the streaming reader) and ChainReader (sync's sharer).
 */
import { readSync } from 'node:fs';
import { ioError } from '../errors.js';

/** Blocking reads that went to the disk (and at least a quarter of all) after which reads go to the thread pool. */
const DISK_TO_SWITCH = 4;

export class BlockingReads {
  private reads = 0;
  private fromDisk = 0;
  private on: boolean;

  /** `maxBytes`: the largest read done blocking (0: never block). */
  constructor(private readonly maxBytes: number) {
    this.on = maxBytes > 0;
  }

  /** Whether a read of `len` bytes should be a blocking one. */
  wants(len: number): boolean {
    return this.on && len <= this.maxBytes;
  }

  /** Whether reads are still done blocking (false once too many went to the disk). */
  get active(): boolean {
    return this.on;
  }

  /** Runs one blocking read and notes whether it went to the disk. */
  run<T>(read: () => T): T {
    const before = process.resourceUsage().fsRead;
    const r = read();
    this.took(process.resourceUsage().fsRead > before);
    return r;
  }

  /** A blocking read was done; `disk`: it waited for the disk. */
  took(disk: boolean): void {
    this.reads++;
    if (disk && ++this.fromDisk >= DISK_TO_SWITCH && this.fromDisk * 4 >= this.reads) this.on = false;
  }
}

/** Fills `buf` with the bytes of `fd` at `pos`, blocking the calling thread; past the end of the file reads as zeros. */
export function preadSync(fd: number, buf: Buffer, pos: number, file: string): void {
  let done = 0;
  while (done < buf.length) {
    let n: number;
    try {
      n = readSync(fd, buf, done, buf.length - done, pos + done);
    } catch (err) {
      throw ioError(err, 'cannot read image', file);
    }
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}
