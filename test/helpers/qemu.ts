/**
 * The real QEMU tools (qemu-img, qemu-io from $PATH) as test oracles and image builders:
 * - `qemuImg()` / `qemuIo()` throw with the tool's stderr when it fails (unless the exit code is listed
 *   in `okCodes`); `qemuCreate()` makes a qcow2 image with options and a backing file;
 * - `qemuMapAlone()` / `qemuRawAlone()`: what qemu sees in ONE qcow2 file with its backing file cut off,
 *   the reference for `clonebox image map` and for the reader's bytes;
 * - `qemuRaw()`, `qemuCompare()`, `qemuCheck()`: guest content, equality and consistency.
 */
import path from 'node:path';
import { describeFailure, type RunOptions, type RunResult, run, runChecked } from './process.js';

/** `qemu-img ARGS`; throws with stderr on failure (exit codes in `okCodes` are accepted). */
export function qemuImg(args: readonly string[], opts: RunOptions & { okCodes?: number[] } = {}): Promise<RunResult> {
  return runChecked('qemu-img', args, opts);
}

/**
 * `qemu-io -f FORMAT -c CMD1 -c CMD2 ... FILE` (qemu-io exits non-zero when any command fails), on an
 * image no process has open. Example: `qemuIo(img, ['write -P 0xab 0 64k', 'write -z 1M 64k'])`.
 * Use `write -s SRCFILE OFF LEN` to write arbitrary (e.g. random) bytes taken from a file.
 */
export function qemuIo(file: string, commands: string | readonly string[], opts: { format?: string; cwd?: string } = {}): Promise<RunResult> {
  const args = ['-f', opts.format ?? 'qcow2'];
  for (const c of typeof commands === 'string' ? [commands] : commands) args.push('-c', c);
  args.push(file);
  return runChecked('qemu-io', args, opts.cwd ? { cwd: opts.cwd } : {});
}

export interface CreateOptions {
  /** `-o` options, e.g. `['compat=0.10', 'cluster_size=4k']`. */
  options?: readonly string[];
  /** Backing file, as written into the image (relative names resolve against the image's folder). */
  backing?: string;
  /** Format of the backing file (default qcow2). */
  backingFormat?: string;
}

/**
 * `qemu-img create -f qcow2 [-o OPTIONS] [-b BACKING -F FMT] FILE [SIZE]`, run in the image's folder so
 * that a relative backing name is found. Without `size`, an overlay takes its backing file's size.
 */
export async function qemuCreate(file: string, size: number | string | undefined, opts: CreateOptions = {}): Promise<void> {
  const args = ['create', '-q', '-f', 'qcow2'];
  if (opts.options?.length) args.push('-o', opts.options.join(','));
  if (opts.backing !== undefined) args.push('-b', opts.backing, '-F', opts.backingFormat ?? 'qcow2');
  args.push(file);
  if (size !== undefined) args.push(String(size));
  await qemuImg(args, { cwd: path.dirname(path.resolve(file)) });
}

/**
 * The `json:` filename that makes QEMU open one qcow2 file ALONE: the backing file is cut off, so
 * unallocated ranges are reported as such (and read as zeros) instead of coming from the backing file.
 */
export function aloneSpec(file: string): string {
  return `json:${JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: path.resolve(file) } })}`;
}

type ExtentKind = 'data' | 'zero' | 'unallocated';

export interface MapExtent {
  offset: number;
  length: number;
  kind: ExtentKind;
}

/** One entry of `qemu-img map --output=json`. */
interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** Maps qemu's flags to clonebox's kinds: data → data; present zero → zero; not present → unallocated. */
function qemuKind(e: QemuMapEntry): ExtentKind {
  if (e.data) return 'data';
  if (e.present === false) return 'unallocated';
  if (e.zero) return 'zero';
  throw new Error(`qemu-img map entry with present, !data, !zero: ${JSON.stringify(e)}`);
}

/** Merges adjacent extents of the same kind (input must be sorted and contiguous). */
export function mergeExtents(extents: readonly MapExtent[]): MapExtent[] {
  const out: MapExtent[] = [];
  for (const e of extents) {
    if (e.length === 0) continue;
    const last = out[out.length - 1];
    if (last && last.kind === e.kind && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length, kind: e.kind });
  }
  return out;
}

/** `qemu-img map --output=json` of `file` opened alone, as clonebox's extent list (merged). */
export async function qemuMapAlone(file: string): Promise<MapExtent[]> {
  const r = await qemuImg(['map', '--output=json', aloneSpec(file)]);
  const entries = JSON.parse(r.stdout) as QemuMapEntry[];
  return mergeExtents(entries.map((e) => ({ offset: e.start, length: e.length, kind: qemuKind(e) })));
}

/** Writes the guest bytes of `file` opened alone (no backing file) to the raw file `out`. */
export async function qemuRawAlone(file: string, out: string): Promise<void> {
  await qemuImg(['convert', '-O', 'raw', aloneSpec(file), out]);
}

/** Writes the guest bytes of `file` with its whole backing chain to the raw file `out`. */
export async function qemuRaw(file: string, out: string): Promise<void> {
  await qemuImg(['convert', '-O', 'raw', file, out]);
}

export interface QemuCheck {
  code: number;
  result: {
    filename?: string;
    format?: string;
    'check-errors': number;
    corruptions?: number;
    leaks?: number;
    'corruptions-fixed'?: number;
    'leaks-fixed'?: number;
    'image-end-offset'?: number;
    'allocated-clusters'?: number;
    'total-clusters'?: number;
    'fragmented-clusters'?: number;
    'compressed-clusters'?: number;
  };
  stdout: string;
  stderr: string;
}

/**
 * `qemu-img check --output=json FILE`. Exit codes: 0 clean, 1 check not completed, 2 corruptions,
 * 3 leaks only, 63 format without checks. Returns them instead of throwing, with the parsed result.
 */
export async function qemuCheck(file: string): Promise<QemuCheck> {
  const r = await run('qemu-img', ['check', '--output=json', file]);
  let result: QemuCheck['result'];
  try {
    result = JSON.parse(r.stdout) as QemuCheck['result'];
  } catch {
    throw new Error(describeFailure('qemu-img', ['check', '--output=json', file], r));
  }
  return { code: r.code, result, stdout: r.stdout, stderr: r.stderr };
}

/**
 * `qemu-img compare [-f FMT_A] [-F FMT_B] A B`: returns the exit code (0 identical, 1 different) and
 * output; throws for errors (exit 2+). `strict` (-s) also fails when sizes differ or allocation differs;
 * `shareLocks` (-U) reads images a running qemu holds open.
 */
export async function qemuCompare(
  a: string,
  b: string,
  opts: { formatA?: string; formatB?: string; strict?: boolean; shareLocks?: boolean; timeoutMs?: number } = {},
): Promise<RunResult> {
  const args = ['compare'];
  if (opts.formatA) args.push('-f', opts.formatA);
  if (opts.formatB) args.push('-F', opts.formatB);
  if (opts.strict) args.push('-s');
  if (opts.shareLocks) args.push('-U'); // images a running qemu holds open
  args.push(a, b);
  return runChecked('qemu-img', args, { okCodes: [1], ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) });
}
