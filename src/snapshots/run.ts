/**
 * `snapshot run`: an automatic snapshot, then the user's command with inherited stdio; with
 * rollback-on-fail a non-zero exit restores the snapshot. Returns the command's exit status
 * (128 + signal number when it died of a signal, as shells report it).
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { constants } from 'node:os';
import path from 'node:path';
import { CloneboxError } from '../errors.js';
import { checkName } from '../names.js';
import type { SnapshotManager } from './manager.js';
import { beforePolicy } from './settings.js';

/**
 * Finds the program `spawn` would run (a path, or a name looked up in PATH) and checks that it is an
 * executable file. Done before the auto snapshot: a command that cannot start must not take a snapshot
 * nor run the retention policy, which may prune an older restore point (issue 17).
 */
async function checkRunnable(cmd: string, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const candidates = cmd.includes('/') ? [path.resolve(cmd)] : (env.PATH ?? '').split(path.delimiter).map((dir) => path.resolve(dir === '' ? '.' : dir, cmd));
  let why = cmd.includes('/') ? 'no such file' : 'command not found in PATH';
  for (const file of candidates) {
    const st = await stat(file).catch(() => null);
    if (!st) continue;
    if (!st.isFile()) {
      why = `${file} is not a file`;
      continue;
    }
    if (
      await access(file, fsConstants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return;
    why = `${file} is not executable`;
  }
  throw CloneboxError.COMMAND_FAILED(`cannot run ${cmd}: ${why}; no snapshot was taken`, {
    hint: cmd.includes('/') ? 'check the path and its execute permission' : 'give the path of the program, or check PATH',
  });
}

export interface RunResult {
  snapshot: string;
  exit_code: number;
  rolled_back: boolean;
  warnings: string[];
  notices: string[];
}

export async function runWithSnapshot(
  mgr: SnapshotManager,
  vm: string,
  argv: string[],
  opts: { name?: string; rollbackOnFail?: boolean; op?: string },
): Promise<RunResult> {
  if (argv.length === 0) throw new CloneboxError('USAGE', 'snapshot run needs a command after --', { hint: 'e.g. clonebox snapshot run web -- ./upgrade.sh' });
  // --op NAME says which operation the command is (`upgrade`, as before_operations names it).
  if (opts.op !== undefined) checkName('snapshot', opts.op);
  await checkRunnable(argv[0]!);
  const created = await mgr.create(vm, {
    ...(opts.name !== undefined ? { name: opts.name } : {}),
    autoPolicy: opts.op !== undefined ? beforePolicy(opts.op) : 'run',
    description: `automatic snapshot before${opts.op !== undefined ? ` ${opts.op}` : ''}: ${argv.join(' ')}`.slice(0, 500),
  });
  const snapshot = created.value.name;
  const warnings = [...created.warnings];
  const notices = [...(created.notices ?? [])];
  const code = await new Promise<number>((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'inherit' });
    child.on('error', (err) => reject(new CloneboxError('COMMAND_FAILED', `cannot run ${argv[0]}: ${err.message}`)));
    child.on('exit', (c, sig) => resolve(c ?? 128 + (sig ? ((constants.signals as Record<string, number>)[sig] ?? 1) : 1)));
  }).catch(async (err) => {
    // Checked above, so only a race gets here (the program removed meanwhile): the snapshot records
    // nothing the command did, so it goes again.
    await mgr.delete(vm, snapshot, {}).catch(() => undefined);
    throw err;
  });
  let rolledBack = false;
  if (code !== 0 && opts.rollbackOnFail) {
    const r = await mgr.restore(vm, { name: snapshot });
    warnings.push(...r.warnings);
    rolledBack = true;
  }
  return { snapshot, exit_code: code, rolled_back: rolledBack, warnings, notices };
}
