/**
 * The code of the CloneboxError a call throws, for assertions like
 * `expect(codeOf(() => decodeInvite(s))).toBe('BAD_INVITE')`. Any other error is thrown on, so a
 * failure shows the real error instead of a code mismatch.
 */
import { CloneboxError } from '../../src/errors.js';

function code(err: unknown): string {
  if (err instanceof CloneboxError) return err.code;
  throw err;
}

/** The code `fn` throws, or null when it returns. */
export function codeOf(fn: () => unknown): string | null {
  try {
    fn();
  } catch (err) {
    return code(err);
  }
  return null;
}

/** The code `p` rejects with, or null when it resolves. */
export async function rejectionCode(p: Promise<unknown>): Promise<string | null> {
  try {
    await p;
  } catch (err) {
    return code(err);
  }
  return null;
}
