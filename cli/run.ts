/**
 * Glue between commander and the actions: builds the context, runs the action, and turns any thrown
 * error into the contract's error output and exit code.
 */
import type { Command } from 'commander';
import { makeCtx, type Ctx, type GlobalOpts } from './context.js';
import { reportError, warn } from './output.js';
import { sweepInterrupted } from '../src/store/sweep.js';

/** Commands that never use the home (they work on files given to them), so they do not sweep it. */
const NO_HOME = new Set(['image info', 'image map', 'snapshot verify', 'snapshot inspect', 'key generate', 'dht bootstrap', 'demo']);

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
    let ctx: Ctx | null = null;
    try {
      ctx = makeCtx(opts);
      // Interrupted imports of VMs that never came to exist are recovered here (store/sweep.ts).
      if (!NO_HOME.has(commandPath(cmd))) for (const w of await sweepInterrupted(ctx.home)) warn(w);
      await (fn as (ctx: Ctx, ...args: unknown[]) => unknown)(ctx, ...args.slice(0, -1));
    } catch (err) {
      process.exitCode = reportError(err, Boolean(opts.json));
    }
  };
}
