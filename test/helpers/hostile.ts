/**
 * What clonebox's reader makes of a possibly hostile qcow2 file: opened, described, every run
 * enumerated and every data run read, within a time and memory limit. Shared by the hostile-image
 * tests and the committed hostile fixtures.
 */
import path from 'node:path';
import { expect } from 'vitest';
import { CloneboxError } from '../../src/errors.js';
import { type ImageInfo, Qcow2Image } from '../../src/qcow2/reader.js';

const M = 1024 * 1024;

/** Per-case limits: a hostile file must be refused (or read) quickly and without large allocations. */
const CASE_TIME_LIMIT_MS = 3000;
const CASE_RSS_LIMIT = 300 * M;

export type Outcome =
  | { ok: true; info: ImageInfo; bytes: Buffer | null; dataRuns: number; ms: number }
  | { ok: false; code: string; message: string; ms: number };

/**
 * Opens the image, takes info(), enumerates every run, reads every data run and (when small enough)
 * the whole disk. Any exception that is not a CloneboxError fails the test.
 */
export async function outcome(file: string): Promise<Outcome> {
  const t0 = Date.now();
  const rss0 = process.memoryUsage().rss;
  const work = (async (): Promise<Outcome> => {
    let img: Qcow2Image | null = null;
    try {
      img = await Qcow2Image.open(file, { warn: () => undefined });
      const info = await img.info();
      let dataRuns = 0;
      for await (const run of img.runs()) {
        if (run.kind !== 'data') continue;
        const b = await img.readRun(run);
        if (b.length !== run.length) throw new Error(`readRun returned ${b.length} bytes for a ${run.length}-byte run`);
        dataRuns++;
      }
      const bytes = img.virtualSize <= 16 * M ? await img.read(0, img.virtualSize) : null;
      return { ok: true, info, bytes, dataRuns, ms: Date.now() - t0 };
    } catch (err) {
      if (!(err instanceof CloneboxError)) {
        throw new Error(`${path.basename(file)}: threw ${(err as Error)?.constructor?.name}, not a CloneboxError: ${(err as Error)?.stack ?? err}`);
      }
      return { ok: false, code: err.code, message: err.message, ms: Date.now() - t0 };
    } finally {
      await img?.close().catch(() => undefined);
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${path.basename(file)}: no outcome after ${CASE_TIME_LIMIT_MS * 3} ms (hang)`)), CASE_TIME_LIMIT_MS * 3);
  });
  try {
    const o = await Promise.race([work, hang]);
    expect(o.ms, `${path.basename(file)} took ${o.ms} ms`).toBeLessThan(CASE_TIME_LIMIT_MS);
    expect(process.memoryUsage().rss - rss0, 'memory growth').toBeLessThan(CASE_RSS_LIMIT);
    return o;
  } finally {
    clearTimeout(timer);
  }
}
