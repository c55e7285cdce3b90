/** New empty overlays: the image every snapshot and restore puts in front of a sealed layer. */
import path from 'node:path';
import type { Geometry } from './probe.js';
import { Qcow2Writer } from './writer.js';

/**
 * A new empty overlay at `out` whose backing file is `backing` (absolute), stored relative to `out`.
 * `geo` is the disk's geometry (imageGeometry of the backing file, or of the disk about to become it).
 */
export async function createOverlay(out: string, backing: string, geo: Geometry, mode?: number): Promise<void> {
  const w = await Qcow2Writer.create(out, {
    ...(mode !== undefined ? { mode } : {}),
    virtualSize: geo.virtualSize,
    clusterSize: geo.clusterSize,
    backingFile: path.relative(path.dirname(out), backing),
    backingFormat: 'qcow2',
  });
  await w.finish();
}
