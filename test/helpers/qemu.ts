/**
 * Test helpers around the real QEMU tools (qemu-img, qemu-io) and the clonebox CLI.
 *
 * - Temporary directories: `makeTempDir()` (removed after the test file's tests by a hook this module
 *   registers, or earlier by `cleanupTempDirs()`), or `useTempDir()` which registers beforeAll/afterAll
 *   hooks in the calling suite. Set CLONEBOX_KEEP_TMP=1 to keep them.
 * - `run()` spawns any program and collects its output; `qemuImg()` / `qemuIo()` throw with the tool's
 *   stderr when it fails (unless the exit code is listed in `okCodes`).
 * - `qemuMapAlone()` / `qemuRawAlone()`: what qemu sees in ONE qcow2 file with its backing file cut off,
 *   the reference for `clonebox image map` and for the reader's bytes.
 * - `runCli()`: runs `node bin/clonebox.js` (the built CLI in dist/, see `npm test`) with a given home.
 *
 * Nothing here needs the network; everything runs qemu-img/qemu-io from $PATH.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';

/** Repository root (this file is test/helpers/qemu.ts). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The CLI launcher; it loads dist/cli/main.js, so the project must be built (`npm test` does it). */
export const CLI_PATH = path.join(REPO_ROOT, 'bin', 'clonebox.js');

// ---------------------------------------------------------------------------------------------------
// Temporary directories

const tempDirs = new Set<string>();

/** Creates a fresh directory under the OS temp dir; `cleanupTempDirs()` removes it. */
export async function makeTempDir(prefix = 'clonebox-test-'): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** Removes every directory made by makeTempDir() (unless CLONEBOX_KEEP_TMP is set, for debugging). */
export async function cleanupTempDirs(): Promise<void> {
  const dirs = [...tempDirs];
  tempDirs.clear();
  if (process.env.CLONEBOX_KEEP_TMP) {
    for (const d of dirs) process.stderr.write(`kept temp dir ${d}\n`);
    return;
  }
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
}

/**
 * Registers hooks that create one temp dir before the file's (or describe block's) tests and remove
 * it after them. Returns a getter, valid inside tests and later hooks.
 */
export function useTempDir(prefix?: string): () => string {
  let dir: string | null = null;
  beforeAll(async () => {
    dir = await makeTempDir(prefix);
  });
  afterAll(async () => {
    if (dir === null) return;
    if (process.env.CLONEBOX_KEEP_TMP) process.stderr.write(`kept temp dir ${dir}\n`);
    else await rm(dir, { recursive: true, force: true });
    tempDirs.delete(dir);
  });
  return () => {
    if (dir === null) throw new Error('useTempDir(): the directory exists only inside tests and hooks');
    return dir;
  };
}

// Every test file importing this module removes its makeTempDir() directories when its tests are done
// (vitest evaluates this module once per test file, while the file's suites are being collected).
afterAll(cleanupTempDirs);

// ---------------------------------------------------------------------------------------------------
// Running programs

export interface RunResult {
  code: number;
  /** Set when the process was killed by a signal (then code is -1). */
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd?: string;
  /** Replaces the environment entirely when given (use `{...process.env, X: '1'}` to extend it). */
  env?: NodeJS.ProcessEnv;
  /** Written to stdin, which is then closed. stdin is always a pipe (never a TTY). */
  input?: string | Buffer;
  /** Kill the process after this many ms (default 60 s) and fail. */
  timeoutMs?: number;
}

/** Spawns `cmd args` without a shell and collects its output. Never throws for a non-zero exit. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timeoutMs = opts.timeoutMs ?? 60_000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const res: RunResult = {
        code: code ?? -1,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      };
      if (timedOut) reject(new Error(`${cmd} ${args.join(' ')} timed out after ${timeoutMs} ms\n${res.stderr}`));
      else resolve(res);
    });
    child.stdin.on('error', () => undefined); // the child may exit without reading its input
    child.stdin.end(opts.input ?? '');
  });
}

function describeFailure(cmd: string, args: readonly string[], r: RunResult): string {
  return `${cmd} ${args.map((a) => (/[\s"{}]/.test(a) ? `'${a}'` : a)).join(' ')} exited with ${r.code}` +
    `${r.signal ? ` (signal ${r.signal})` : ''}\nstderr: ${r.stderr.trim()}\nstdout: ${r.stdout.trim().slice(0, 2000)}`;
}

/** Runs a tool and throws (with its stderr) unless it exits with 0 or one of `okCodes`. */
export async function runChecked(cmd: string, args: readonly string[], opts: RunOptions & { okCodes?: number[] } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0 && !(opts.okCodes ?? []).includes(r.code)) throw new Error(describeFailure(cmd, args, r));
  return r;
}

/** `qemu-img ARGS`; throws with stderr on failure (exit codes in `okCodes` are accepted). */
export function qemuImg(args: readonly string[], opts: RunOptions & { okCodes?: number[] } = {}): Promise<RunResult> {
  return runChecked('qemu-img', args, opts);
}

/**
 * `qemu-io -f FORMAT -c CMD1 -c CMD2 ... FILE` (qemu-io exits non-zero when any command fails).
 * Example: `qemuIo(img, ['write -P 0xab 0 64k', 'write -z 1M 64k', 'discard 2M 64k'])`.
 * Use `write -s SRCFILE OFF LEN` to write arbitrary (e.g. random) bytes taken from a file.
 */
export function qemuIo(file: string, commands: readonly string[], opts: { format?: string; cwd?: string } = {}): Promise<RunResult> {
  const args = ['-f', opts.format ?? 'qcow2'];
  for (const c of commands) args.push('-c', c);
  args.push(file);
  return runChecked('qemu-io', args, opts.cwd ? { cwd: opts.cwd } : {});
}

/**
 * The `json:` filename that makes QEMU open one qcow2 file ALONE: the backing file is cut off, so
 * unallocated ranges are reported as such (and read as zeros) instead of coming from the backing file.
 */
export function aloneSpec(file: string): string {
  return `json:${JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: path.resolve(file) } })}`;
}

export type ExtentKind = 'data' | 'zero' | 'unallocated';

export interface MapExtent {
  offset: number;
  length: number;
  kind: ExtentKind;
}

/** One entry of `qemu-img map --output=json`. */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** Maps qemu's flags to clonebox's kinds: data → data; present zero → zero; not present → unallocated. */
export function qemuKind(e: QemuMapEntry): ExtentKind {
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
    'corruptions'?: number;
    'leaks'?: number;
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
 * output; throws for errors (exit 2+). `strict` (-s) also fails when sizes differ or allocation differs.
 */
export async function qemuCompare(a: string, b: string, opts: { formatA?: string; formatB?: string; strict?: boolean } = {}): Promise<RunResult> {
  const args = ['compare'];
  if (opts.formatA) args.push('-f', opts.formatA);
  if (opts.formatB) args.push('-F', opts.formatB);
  if (opts.strict) args.push('-s');
  args.push(a, b);
  return runChecked('qemu-img', args, { okCodes: [1] });
}

// ---------------------------------------------------------------------------------------------------
// The clonebox CLI

export interface CliOptions {
  /**
   * The state directory, passed as CLONEBOX_HOME. `null` removes CLONEBOX_HOME from the environment
   * (for tests of `--home` itself; then set HOME in `env` so ~/.clonebox is never the real one).
   */
  home: string | null;
  /** Written to stdin (stdin is a pipe, never a TTY). */
  input?: string | Buffer;
  /** Extra environment variables (merged over process.env). */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  timeoutMs?: number;
}

/** Runs `node bin/clonebox.js ARGS`; returns {code, stdout, stderr} and never throws for an exit code. */
export async function runCli(args: readonly string[], opts: CliOptions): Promise<RunResult> {
  if (!existsSync(path.join(REPO_ROOT, 'dist', 'cli', 'main.js'))) {
    throw new Error('dist/cli/main.js is missing: build first with `npx tsc -p tsconfig.json` (npm test does it)');
  }
  const env: NodeJS.ProcessEnv = { ...process.env, ...(opts.env ?? {}) };
  delete env.CLONEBOX_HOME;
  if (opts.home !== null) env.CLONEBOX_HOME = opts.home;
  if (opts.env?.CLONEBOX_HOME !== undefined) env.CLONEBOX_HOME = opts.env.CLONEBOX_HOME;
  return run(process.execPath, [CLI_PATH, ...args], {
    env,
    ...(opts.input !== undefined ? { input: opts.input } : {}),
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
    timeoutMs: opts.timeoutMs ?? 60_000,
  });
}

/** The CLI bound to one home: `cli` (any outcome), `ok` (must exit 0), `json` (with `--json`, parsed). */
export class CliHome {
  constructor(readonly home: string, private readonly defaults: Omit<CliOptions, 'home'> = {}) {}

  cli(args: string[], opts: Omit<CliOptions, 'home'> = {}): Promise<RunResult> {
    return runCli(args, { ...this.defaults, ...opts, home: this.home });
  }

  async ok(args: string[]): Promise<RunResult> {
    const r = await this.cli(args);
    if (r.code !== 0) throw new Error(`clonebox ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return r;
  }

  async json<T>(args: string[]): Promise<T> {
    return parseJsonOutput<T>(await this.ok([...args, '--json']));
  }
}

/** Parses the CLI's `--json` stdout, with the whole output in the error when it is not one JSON document. */
export function parseJsonOutput<T = unknown>(r: RunResult): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`stdout is not one JSON document (exit ${r.code}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
}

/**
 * Asserts the contract's error format and returns the parsed pieces: stderr is one
 * `clonebox: error: ...` line plus at most one `hint: ...` line. With `json`, stdout must be exactly
 * `{"error": {"code", "message"}}`.
 */
export function parseCliError(r: RunResult, json: boolean): { message: string; hint: string | null; code: string | null } {
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  const problems: string[] = [];
  if (lines.length < 1 || lines.length > 2) problems.push(`stderr has ${lines.length} lines`);
  const m = /^clonebox: error: (.+)$/.exec(lines[0] ?? '');
  if (!m) problems.push('first stderr line is not "clonebox: error: ..."');
  if (lines.length === 2 && !/^hint: .+/.test(lines[1]!)) problems.push('second stderr line is not "hint: ..."');
  let code: string | null = null;
  if (json) {
    let doc: unknown;
    try {
      doc = JSON.parse(r.stdout);
    } catch {
      problems.push('stdout is not JSON');
    }
    const err = (doc as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    if (!err || typeof err.code !== 'string' || typeof err.message !== 'string') problems.push('stdout is not {"error": {"code", "message"}}');
    else if (Object.keys(doc as object).length !== 1 || Object.keys(err).sort().join(',') !== 'code,message') problems.push('extra keys in the error document');
    else code = err.code;
  } else if (r.stdout !== '') {
    problems.push('stdout is not empty');
  }
  if (problems.length) throw new Error(`bad error output (${problems.join('; ')}), exit ${r.code}:\nstderr:\n${r.stderr}\nstdout:\n${r.stdout}`);
  return { message: m![1]!, hint: lines[1]?.replace(/^hint: /, '') ?? null, code };
}

// ---------------------------------------------------------------------------------------------------
// Bytes

/** Reads `length` bytes at `offset` of a file (zero-filled past its end, as QEMU reads raw files). */
export async function readFileRange(file: string, offset: number, length: number): Promise<Buffer> {
  const { open } = await import('node:fs/promises');
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
