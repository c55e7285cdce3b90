/**
 * Helpers for the team-sync tests: a CLI runner that works whether or not cli/main.ts wires in
 * registerTeam/registerDht yet (until it does, a small launcher registers them on buildProgram(), with
 * main()'s error handling), and a private DHT per test file on 127.0.0.1 (never the public DHT).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';
import { CLI_PATH, REPO_ROOT, makeTempDir, run, type RunResult } from './helpers/qemu.js';

function wired(): boolean {
  try {
    return readFileSync(path.join(REPO_ROOT, 'dist', 'cli', 'main.js'), 'utf8').includes('registerTeam');
  } catch {
    return false;
  }
}

let launcher: Promise<string> | null = null;

/** The script to run as `clonebox`: the real launcher once cli/main.ts wires the team commands. */
export function clonebox(): Promise<string> {
  if (wired()) return Promise.resolve(CLI_PATH);
  launcher ??= (async () => {
    const dir = await makeTempDir('clonebox-sync-cli-');
    const file = path.join(dir, 'clonebox-with-team.mjs');
    const d = (p: string) => JSON.stringify(pathToFileURL(path.join(REPO_ROOT, 'dist', p)).href);
    await writeFile(file, `
import { createRequire } from 'node:module';
const { CommanderError } = createRequire(${JSON.stringify(path.join(REPO_ROOT, 'package.json'))})('commander');
const { buildProgram } = await import(${d('cli/main.js')});
const { registerTeam, registerDht } = await import(${d('cli/commands/team.js')});
const { reportError } = await import(${d('cli/output.js')});
const { usageError } = await import(${d('src/errors.js')});
const program = buildProgram();
registerTeam(program);
registerDht(program);
const walk = (c) => { c.exitOverride(); c.configureOutput({ writeErr: () => undefined }); c.commands.forEach(walk); };
program.commands.forEach(walk);
const json = process.argv.includes('--json');
try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    if (['commander.helpDisplayed', 'commander.version', 'commander.help'].includes(err.code)) process.exitCode = 0;
    else process.exitCode = reportError(usageError(err.message.replace(/^error: /, ''), 'see \`clonebox --help\`'), json);
  } else process.exitCode = reportError(err, json);
}
`);
    return file;
  })();
  return launcher;
}

/** Runs clonebox with --home HOME. */
export async function cb(home: string, args: readonly string[], timeoutMs = 30_000): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.CLONEBOX_HOME;
  return run(process.execPath, [await clonebox(), '--home', home, ...args], { env, timeoutMs });
}

/** Starts `clonebox dht bootstrap` (port 0: any free port) and returns its address and process. */
export async function startBootstrapCli(home: string): Promise<{ child: ChildProcess; address: { host: string; port: number }; stop(): Promise<number | null> }> {
  const child = spawn(process.execPath, [await clonebox(), '--home', home, 'dht', 'bootstrap', '--host', '127.0.0.1', '--port', '0', '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const first = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`dht bootstrap printed nothing in 10 s: ${stderr}`)), 10_000);
    readline.createInterface({ input: child.stdout! }).once('line', (l) => { clearTimeout(timer); resolve(l); });
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
