/**
 * Running programs from tests: `run()` spawns any program and collects its output, `runChecked()`
 * throws with the program's stderr when it fails, `bounded()` puts a time limit on any promise.
 */
import { spawn } from 'node:child_process';

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

/** The command line, exit status and output of a failed run, for an error message. */
export function describeFailure(cmd: string, args: readonly string[], r: RunResult): string {
  return (
    `${cmd} ${args.map((a) => (/[\s"{}]/.test(a) ? `'${a}'` : a)).join(' ')} exited with ${r.code}` +
    `${r.signal ? ` (signal ${r.signal})` : ''}\nstderr: ${r.stderr.trim()}\nstdout: ${r.stdout.trim().slice(0, 2000)}`
  );
}

/** Runs a tool and throws (with its stderr) unless it exits with 0 or one of `okCodes`. */
export async function runChecked(cmd: string, args: readonly string[], opts: RunOptions & { okCodes?: number[] } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0 && !(opts.okCodes ?? []).includes(r.code)) throw new Error(describeFailure(cmd, args, r));
  return r;
}

/** Rejects when `p` takes longer than `ms`. */
export async function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
