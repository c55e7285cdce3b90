/**
 * Glue between commander and the actions: opens the library on the home, runs the action, and turns
 * any thrown error into the contract's error output and exit code.
 */
import type { Command } from 'commander';
import { Clonebox } from '../src/index.js';
import type { Ctx, GlobalOpts } from './context.js';
import { guarded, interruptedBy, signalExitCode } from './interrupt.js';
import { printWarning, reportError, verbosity } from './output.js';

/** Commands that never use the home (they work on files given to them), so they do not recover it. */
const NO_HOME = new Set([
  'image info',
  'image map',
  'snapshot verify',
  'snapshot inspect',
  'key generate',
  'dht bootstrap',
  'demo',
  'config check',
  'remote snapshot list',
  'remote snapshot create',
  'remote snapshot revert',
  'remote snapshot delete',
]);

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** Commander passes the command's arguments, then its options; each action declares their types. */
type Action = (ctx: Ctx, ...args: never[]) => Promise<unknown> | unknown;

export function action(fn: Action) {
  return async (...args: unknown[]): Promise<void> => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.optsWithGlobals() as GlobalOpts;
    verbosity.quiet = Boolean(opts.quiet);
    verbosity.verbose = Boolean(opts.verbose);
    let cb: Clonebox | null = null;
    // The whole action under the signal handlers: an interrupted command cleans up (interrupt.ts).
    await guarded(async () => {
      try {
        // Interrupted imports of VMs that never came to exist are recovered here (store/sweep.ts).
        cb = await Clonebox.open({ ...(opts.home !== undefined ? { home: opts.home } : {}), recover: !NO_HOME.has(commandPath(cmd)), onWarning: printWarning });
        const given = args.slice(0, -1);
        // Wherever a command takes a VM, `.`, a directory or a .clonebox.yaml names the VM that file describes.
        for (const [i, a] of cmd.registeredArguments.entries()) {
          if (a.name() === 'vm' && typeof given[i] === 'string') given[i] = await cb.config.resolveVm(given[i]);
        }
        await (fn as (ctx: Ctx, ...args: unknown[]) => unknown)({ cb, json: Boolean(opts.json) }, ...given);
      } catch (err) {
        process.exitCode = reportError(err, Boolean(opts.json));
        const sig = interruptedBy();
        if (sig) process.exitCode = signalExitCode(sig);
      } finally {
        await cb?.close();
      }
    });
  };
}
