/** One-shot questions about one image file (open, answer, close). */
import { Qcow2Image } from './reader.js';

export interface Geometry {
  virtualSize: number;
  clusterSize: number;
}

async function withImage<T>(file: string, fn: (img: Qcow2Image) => Promise<T> | T): Promise<T> {
  const img = await Qcow2Image.open(file);
  try {
    return await fn(img);
  } finally {
    await img.close();
  }
}

export function imageGeometry(file: string): Promise<Geometry> {
  return withImage(file, (img) => ({ virtualSize: img.virtualSize, clusterSize: img.clusterSize }));
}

/** The backing file's absolute path, or null. */
export function backingOf(file: string): Promise<string | null> {
  return withImage(file, (img) => img.backingPath());
}

/** Bytes of data clusters allocated in this file alone (its own share of a chain). */
export function allocatedBytes(file: string): Promise<number> {
  return withImage(file, async (img) => {
    let n = 0;
    for await (const r of img.runs()) if (r.kind === 'data') n += r.length;
    return n;
  });
}

/** 'qcow2' when the file is a qcow2 image clonebox can open, else 'raw'. */
export async function formatOf(file: string): Promise<'qcow2' | 'raw'> {
  try {
    await withImage(file, () => undefined);
    return 'qcow2';
  } catch {
    return 'raw';
  }
}
