/**
 * Private DHTs for the team-sync tests, never the public one: `clonebox dht bootstrap` as a child
 * process on 127.0.0.1 (stopped with SIGTERM), and useSyncTestbed(), a 3-node DHT in the test process
 * with the homes and CLI helpers of a sync test file.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { afterAll, beforeAll } from 'vitest';
import { type PrivateDht, startPrivateDht } from '../../src/sync/bootstrap.js';
import { CLI_PATH, cb } from './cli.js';
import { cleanupTempDirs, makeTempDir } from './temp.js';

/** Starts `clonebox dht bootstrap` (port 0: any free port) and returns its address and process. */
export async function startBootstrapCli(
  home: string,
): Promise<{ child: ChildProcess; address: { host: string; port: number }; stop(): Promise<number | null> }> {
  const child = spawn(process.execPath, [CLI_PATH, '--home', home, 'dht', 'bootstrap', '--host', '127.0.0.1', '--port', '0', '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const first = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dht bootstrap printed nothing in 10 s: ${stderr}`)), 10_000);
    readline.createInterface({ input: child.stdout! }).once('line', (l) => {
      clearTimeout(timer);
      resolve(l);
    });
    void exited.then((code) => reject(new Error(`dht bootstrap exited ${code}: ${stderr}`)));
  });
  const doc = JSON.parse(first) as { host: string; port: number };
  return {
    child,
    address: { host: doc.host, port: doc.port },
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/**
 * `clonebox snapshot sync --team T --watch` of a home as a child process (a sharer that keeps serving);
 * `children` tracks it so the test's afterAll can kill it if a test fails first. stop() sends SIGTERM
 * and waits (SIGKILL after 8 s).
 */
export function watchSync(home: string, opts: { team: string; bootstrap: string; children: Set<ChildProcess> }): { stop(): Promise<void>; stderr(): string } {
  const child = spawn(
    process.execPath,
    [CLI_PATH, '--home', home, 'snapshot', 'sync', '--team', opts.team, '--bootstrap', opts.bootstrap, '--watch', '--timeout', '20'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  opts.children.add(child);
  let err = '';
  child.stderr!.on('data', (d) => {
    err += d;
  });
  child.stdout!.resume();
  const exited = new Promise<void>((r) =>
    child.once('exit', () => {
      opts.children.delete(child);
      r();
    }),
  );
  return {
    stderr: () => err,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 8000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** A private DHT on 127.0.0.1 and a temporary root for the homes of one sync test file (useSyncTestbed). */
export interface SyncTestbed {
  /** The DHT's `host:port` (for --bootstrap); set once the file's beforeAll ran. */
  readonly bs: string;
  /** The temporary directory that holds the homes (and any scratch file). */
  readonly root: string;
  /** Child processes started by the file (killed by its afterAll if a test failed first). */
  readonly children: Set<ChildProcess>;
  home(name: string): string;
  /** `clonebox ARGS` in home `h`; throws with its output unless it exits 0. */
  ok(h: string, args: string[], timeoutMs?: number): Promise<string>;
  /** `clonebox ARGS --json` in home `h`, parsed. */
  json<T = unknown>(h: string, args: string[], timeoutMs?: number): Promise<T>;
  /** A file of `bytes` random bytes under root. */
  randomFile(name: string, bytes: number): Promise<string>;
  /** The path of the first disk of `vm` in home `h`. */
  diskOf(h: string, vm: string): Promise<string>;
  /** `snapshot sync --team T --json` (bounded by `timeoutS`); a run that printed nothing gives {}. */
  sync<T = unknown>(h: string, team: string, timeoutS: number, extra?: string[]): Promise<{ code: number; doc: T; stderr: string }>;
  /** `snapshot sync --watch` of home `h` as a child process (watchSync). */
  watch(h: string, team: string): ReturnType<typeof watchSync>;
}

/**
 * Sets up, for the calling test file, a private 3-node DHT on 127.0.0.1 (never the public DHT) and a
 * temporary root for homes, in beforeAll/afterAll hooks, with the CLI helpers every sync test uses.
 * `timeoutMs`: the default bound of ok() and json().
 */
export function useSyncTestbed(prefix: string, opts: { timeoutMs?: number } = {}): SyncTestbed {
  let net: PrivateDht | null = null;
  let bs = '';
  let root = '';
  const children = new Set<ChildProcess>();
  beforeAll(async () => {
    net = await startPrivateDht({ host: '127.0.0.1', port: 0 });
    bs = `${net.address.host}:${net.address.port}`;
    root = await makeTempDir(prefix);
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await net?.close();
    await cleanupTempDirs();
  });
  const ok = async (h: string, args: string[], timeoutMs = opts.timeoutMs ?? 60_000): Promise<string> => {
    const r = await cb(h, args, timeoutMs);
    if (r.code !== 0) throw new Error(`clonebox ${args.join(' ')} (home ${path.basename(h)}) exited ${r.code}\n${r.stderr}\n${r.stdout}`);
    return r.stdout;
  };
  const json = async <T = unknown>(h: string, args: string[], timeoutMs?: number): Promise<T> => JSON.parse(await ok(h, [...args, '--json'], timeoutMs)) as T;
  return {
    get bs() {
      return bs;
    },
    get root() {
      return root;
    },
    children,
    home: (name) => path.join(root, name),
    ok,
    json,
    randomFile: async (name, bytes) => {
      const f = path.join(root, name);
      await writeFile(f, randomBytes(bytes));
      return f;
    },
    diskOf: async (h, vm) => (await json<{ disks: { path: string }[] }>(h, ['vm', 'show', vm])).disks[0]!.path,
    sync: async <T = unknown>(h: string, team: string, timeoutS: number, extra: string[] = []) => {
      const r = await cb(h, ['snapshot', 'sync', '--team', team, '--bootstrap', bs, '--timeout', String(timeoutS), ...extra, '--json'], (timeoutS + 30) * 1000);
      return { code: r.code, doc: JSON.parse(r.stdout.trim() || '{}') as T, stderr: r.stderr };
    },
    watch: (h, team) => watchSync(h, { team, bootstrap: bs, children }),
  };
}
