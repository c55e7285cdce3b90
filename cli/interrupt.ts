/**
 * Signals for every command (run.ts installs them around each action): SIGINT, SIGTERM and SIGHUP abort
 * the command's AbortSignal, the same path a library caller takes: a long operation undoes what it
 * started and rejects with ABORTED, and the command then exits 128 + the signal's number, as a shell
 * reports a process killed by it. Without handlers Node would die at once and leave temporary files
 * behind (issue 17). A second signal exits at once; the library's exit hook still deletes the
 * temporaries the process was writing, and a journaled operation cut short is finished or rolled back
 * by the next command on its VM.
 */
import { constants } from 'node:os';

let caught: NodeJS.Signals | null = null;
let controller: AbortController | null = null;

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** The signal that interrupted the command, if one did (run.ts turns it into the exit code). */
export function interruptedBy(): NodeJS.Signals | null {
  return caught;
}

export function signalExitCode(sig: NodeJS.Signals): number {
  return 128 + ((constants.signals as Record<string, number>)[sig] ?? 2);
}

function onSignal(sig: NodeJS.Signals): void {
  if (caught) process.exit(signalExitCode(caught));
  caught = sig;
  controller?.abort();
}

/** Runs a whole command with the signal handlers installed (run.ts). */
export async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  if (controller) return fn();
  controller = new AbortController();
  for (const s of SIGNALS) process.on(s, onSignal);
  try {
    return await fn();
  } finally {
    for (const s of SIGNALS) process.removeListener(s, onSignal);
    controller = null;
  }
}

/** Runs a long operation with the command's signal (aborted by the first SIGINT, SIGTERM or SIGHUP). */
export async function interruptible<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  return guarded(() => fn(controller!.signal));
}
