/**
 * `snapshot verify`: reads the whole bundle and checks everything import checks (key, every seal,
 * every record, every block against its id, every layer digest, the seal's totals and content ids),
 * writing nothing. Problems with the bundle are the result (ok: false), not an exception.
 */

import type { Readable } from 'node:stream';
import { checkAborted } from '../abort.js';
import { WorkerPool } from '../content/workers.js';
import { CloneboxError } from '../errors.js';
import type { KeySource } from './crypto.js';
import { decodeBundle } from './decode.js';
import { openInput } from './input.js';
import { Progress, type ProgressCallback } from './progress.js';
import { BundleReader, type ReaderKeyOptions } from './reader.js';

export interface VerifyResult {
  ok: boolean;
  snapshots: string[];
  blocks_checked: number;
  errors: { code: string; message: string }[];
  encrypted: boolean | null;
  packs: number;
  bytes: number;
}

export interface VerifyOptions extends Pick<ReaderKeyOptions, 'askPassphrase'> {
  /** Accept a plain bundle although a key was given (else BUNDLE_NOT_ENCRYPTED). */
  allowPlain?: boolean | undefined;
  /** Stops the check (it writes nothing): ABORTED rejects. */
  signal?: AbortSignal | undefined;
  /** Bundle bytes read so far, of the file's size (null for a stream). */
  onProgress?: ProgressCallback | undefined;
}

/** `input`: a bundle file, or a stream that gives it (the CLI passes process.stdin for '-'). */
export async function verifyBundle(input: string | Readable, key: KeySource | null, opts: VerifyOptions = {}): Promise<VerifyResult> {
  checkAborted(opts.signal);
  const src = await openInput(input);
  const result: VerifyResult = { ok: false, snapshots: [], blocks_checked: 0, errors: [], encrypted: null, packs: 0, bytes: 0 };
  let reader: BundleReader | null = null;
  let pool: WorkerPool | null = null;
  const progress = new Progress('verify', src.size, opts.onProgress);
  try {
    reader = await BundleReader.open(src.stream, src.label, key, { allowPlain: Boolean(opts.allowPlain), askPassphrase: opts.askPassphrase });
    result.encrypted = reader.header.encrypted;
    result.snapshots = reader.meta.snapshots.map((s) => s.name);
    pool = await WorkerPool.start();
    const r = reader;
    const res = await decodeBundle(
      reader,
      pool,
      {},
      {
        wantData: false,
        onPack: () => {
          progress.set(r.bytesIn);
          checkAborted(opts.signal);
        },
      },
    );
    result.blocks_checked = res.totals.unique_blocks;
    result.packs = res.seal.packs;
    result.ok = true;
  } catch (err) {
    if (!(err instanceof CloneboxError) || err.code === 'INTERNAL' || err.code === 'ABORTED' || err.exitCode === 2) throw err;
    result.errors.push({ code: err.code, message: err.message });
  } finally {
    result.bytes = reader?.bytesIn ?? 0;
    reader?.destroy();
    await pool?.close();
  }
  return result;
}
