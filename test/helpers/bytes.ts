/**
 * Byte-level comparisons and reads for image tests, with short failure messages.
 */
import { open } from 'node:fs/promises';

/** Reads `length` bytes at `offset` of a file (zero-filled past its end, as QEMU reads raw files). */
export async function readFileRange(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf;
  } finally {
    await fh.close();
  }
}

/**
 * Throws a short, useful error when two buffers differ (the first differing offset and a few bytes
 * around it), instead of the megabytes of diff an `expect(a).toEqual(b)` on buffers would print.
 * `base` is added to offsets in the message (the guest offset of the buffers' first byte).
 */
export function assertSameBytes(got: Buffer, want: Buffer, what: string, base = 0): void {
  if (got.length !== want.length) throw new Error(`${what}: length ${got.length}, expected ${want.length}`);
  if (got.equals(want)) return;
  let i = 0;
  while (got[i] === want[i]) i++;
  const hex = (b: Buffer) => b.subarray(i, i + 16).toString('hex');
  throw new Error(`${what}: first difference at offset ${base + i} (0x${(base + i).toString(16)}): got ${hex(got)}, expected ${hex(want)}`);
}
