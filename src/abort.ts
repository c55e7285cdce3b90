/**
 * Cancellation of long operations through an AbortSignal. An aborted operation rejects with the
 * ABORTED code after it has undone what it started, the same path SIGINT takes in the CLI.
 */
import { CloneboxError } from './errors.js';

export function abortedError(): CloneboxError {
  return new CloneboxError('ABORTED', 'interrupted; nothing was left half-written');
}

/** Throws ABORTED when the signal fired: called between steps, where stopping leaves nothing behind. */
export function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortedError();
}
