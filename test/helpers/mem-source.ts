import type { ByteSource } from '../../src/guest/disk.js';
import { GuestFormatError } from '../../src/guest/disk.js';

/** A guest byte source over a buffer: each read returns a copy, as the disk view does. */
export function memSource(buf: Buffer): ByteSource {
  return {
    size: buf.length,
    read: async (o, l) => {
      if (o < 0 || o + l > buf.length) throw new GuestFormatError('past the end');
      return Buffer.from(buf.subarray(o, o + l));
    },
  };
}
