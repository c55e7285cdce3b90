/**
 * The clonebox CLI as the tests run it: `node bin/clonebox.js` (the built CLI in dist/, see `npm test`)
 * with a given home, as `runCli()` (CLONEBOX_HOME) or `cb()` (`--home`), `CliHome` bound to one home, and
 * the parsers of its `--json` output and of its error format.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type RunResult, run } from './process.js';

/** Repository root (this file is test/helpers/cli.ts). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The CLI launcher; it loads dist/cli/main.js, so the project must be built (`npm test` does it). */
export const CLI_PATH = path.join(REPO_ROOT, 'bin', 'clonebox.js');

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

/** Runs `clonebox --home HOME ARGS` with CLONEBOX_HOME unset. */
export function cb(home: string, args: readonly string[], timeoutMs = 30_000): Promise<RunResult> {
  return runCli(['--home', home, ...args], { home: null, timeoutMs });
}

/** The CLI bound to one home: `cli` (any outcome), `ok` (must exit 0), `json` (with `--json`, parsed). */
export class CliHome {
  constructor(
    readonly home: string,
    private readonly defaults: Omit<CliOptions, 'home'> = {},
  ) {}

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
