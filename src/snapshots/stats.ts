/**
 * Space accounting for a VM (the contract's `snapshot stats`): virtual size, bytes on disk, bytes
 * allocated in all layers, and what that allocation would cost after block deduplication.
 */
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { Qcow2Image } from '../qcow2/reader.js';

export interface VmStats {
  virtual_size: number;
  physical_bytes: number;
  allocated_bytes: number;
  unique_bytes: number;
  savings_percent: number;
  layers: number;
}

/**
 * `files`: every layer file of the VM (sealed layers and current overlays). Dedup is at each image's
 * cluster granularity, on content hashes (SHA-256, first 128 bits kept in memory per unique block).
 */
export async function computeStats(virtualSize: number, files: string[]): Promise<VmStats> {
  let physical = 0;
  let allocated = 0;
  let unique = 0;
  const seen = new Set<string>();
  for (const f of new Set(files)) {
    physical += (await stat(f)).size;
    const img = await Qcow2Image.open(f);
    try {
      const cs = img.clusterSize;
      for await (const r of img.runs()) {
        if (r.kind !== 'data') continue;
        allocated += r.length;
        const data = await img.readRun(r);
        for (let o = 0; o < data.length; o += cs) {
          const block = data.subarray(o, Math.min(o + cs, data.length));
          const key = createHash('sha256').update(block).digest('base64').slice(0, 22);
          if (!seen.has(key)) {
            seen.add(key);
            unique += block.length;
          }
        }
      }
    } finally {
      await img.close();
    }
  }
  const savings = allocated === 0 ? 0 : Math.round((1 - unique / allocated) * 1000) / 10;
  return {
    virtual_size: virtualSize,
    physical_bytes: physical,
    allocated_bytes: allocated,
    unique_bytes: unique,
    savings_percent: savings,
    layers: new Set(files).size,
  };
}
