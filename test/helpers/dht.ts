/**
 * A private DHT for the team-sync tests: `clonebox dht bootstrap` as a child process on 127.0.0.1
 * (never the public DHT) that is stopped with SIGTERM.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import readline from 'node:readline';
import { CLI_PATH } from './cli.js';

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
