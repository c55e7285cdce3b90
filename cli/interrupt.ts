/**
 * SIGINT and SIGTERM during a long command abort it through its AbortSignal, the same path a library
 * caller takes: the operation undoes what it started and rejects with ABORTED. The command then exits
 * 128 + the signal's number, as a shell reports a process killed by it. A second signal while the
 * operation cleans up exits at once.
 */
import { constants } from 'node:os';

let caught: NodeJS.Signals | null = null;

/** The signal that interrupted the command, if one did (run.ts turns it into the exit code). */
export function interruptedBy(): NodeJS.Signals | null {
  return caught;
}

export function signalExitCode(sig: NodeJS.Signals): number {
  return 128 + ((constants.signals as Record<string, number>)[sig] ?? 2);
}

export async function interruptible<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const on = (sig: NodeJS.Signals) => {
    if (caught) process.exit(signalExitCode(caught));
    caught = sig;
    controller.abort();
  };
  process.on('SIGINT', on);
  process.on('SIGTERM', on);
  try {
    return await fn(controller.signal);
  } finally {
    process.removeListener('SIGINT', on);
    process.removeListener('SIGTERM', on);
  }
}
