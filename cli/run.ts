/**
 * Glue between commander and the actions: builds the context, runs the action, and turns any thrown
 * error into the contract's error output and exit code.
 */
import type { Command } from 'commander';
import { makeCtx, type Ctx, type GlobalOpts } from './context.js';
import { reportError } from './output.js';

type Action = (ctx: Ctx, ...args: any[]) => Promise<unknown> | unknown;

export function action(fn: Action) {
  return async (...args: unknown[]): Promise<void> => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.optsWithGlobals() as GlobalOpts;
    let ctx: Ctx | null = null;
    try {
      ctx = makeCtx(opts);
      await fn(ctx, ...args.slice(0, -1));
    } catch (err) {
      process.exitCode = reportError(err, Boolean(opts.json));
    }
  };
}
