/**
 * When a reader may read on its own thread with a blocking pread instead of through the libuv thread
 * pool. From the page cache a blocking pread of a couple of MiB is a memory copy; an asynchronous one
 * costs the same copy plus a thread-pool round trip, and on a machine whose cores are busy the pool's
 * thread must first get a CPU, so the awaiting thread sits idle far longer than the copy takes. From
 * the disk it is the other way round: a blocking read stalls everything, several in flight beat one
 * at a time. So reads start blocking and turn asynchronous for good once enough of them were slow.
 *
 * The rule is HostReader's (stream.ts): a read slower than SLOW_MS plus its length at BYTES_PER_MS
 * waited for the disk or lost the CPU; a machine under load preempts a cached read now and then, so
 * what counts is a share of slow reads (at least SLOW_TO_SWITCH and a quarter of all), not one.
 */

/** A blocking read slower than this (ms), plus its length at BYTES_PER_MS, did not come from the page cache. */
const SLOW_MS = 1;
/** Page-cache copy speed assumed for the bound above (well below what memory copies reach). */
const BYTES_PER_MS = 1024 * 1024;
/** Slow blocking reads (and at least a quarter of all) after which reads go to the thread pool. */
const SLOW_TO_SWITCH = 4;

export class BlockingReads {
  private reads = 0;
  private slow = 0;
  private on: boolean;

  /** `maxBytes`: the largest read done blocking (0: never block). */
  constructor(private readonly maxBytes: number) {
    this.on = maxBytes > 0;
  }

  /** Whether a read of `len` bytes should be a blocking one. */
  wants(len: number): boolean {
    return this.on && len <= this.maxBytes;
  }

  /** Whether reads are still done blocking (false once too many were slow). */
  get active(): boolean {
    return this.on;
  }

  /** A blocking read of `len` bytes took `ms`. */
  took(len: number, ms: number): void {
    this.reads++;
    if (ms > SLOW_MS + len / BYTES_PER_MS && ++this.slow >= SLOW_TO_SWITCH && this.slow * 4 >= this.reads) this.on = false;
  }
}
