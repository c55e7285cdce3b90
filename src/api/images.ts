/** `cb.images`: read a qcow2 image's header and allocation without qemu-img (src/qcow2/reader.ts). */
import type { Session } from './session.js';
import type { Extent, ImageInfo, WarningOptions } from './types.js';

export class Images {
  constructor(private readonly s: Session) {}

  info(file: string, opts: WarningOptions = {}): Promise<ImageInfo> {
    return this.s.run(async () => {
      const { Qcow2Image } = await import('../qcow2/reader.js');
      const { describeBackingChain } = await import('../qcow2/backing.js');
      const img = await Qcow2Image.open(file, { warn: this.s.warner(opts.onWarning) });
      let info: Omit<ImageInfo, 'backing_chain'>;
      try {
        info = await img.info();
      } finally {
        await img.close();
      }
      return { ...info, backing_chain: await describeBackingChain(file) };
    });
  }

  /** The extents this file alone holds (not its backing chain), in guest order. */
  map(file: string, opts: WarningOptions = {}): Promise<Extent[]> {
    return this.s.run(async () => {
      const { Qcow2Image } = await import('../qcow2/reader.js');
      const img = await Qcow2Image.open(file, { warn: this.s.warner(opts.onWarning) });
      try {
        const extents: Extent[] = [];
        for await (const e of img.extents()) extents.push({ offset: e.offset, length: e.length, kind: e.kind });
        return extents;
      } finally {
        await img.close();
      }
    });
  }
}
