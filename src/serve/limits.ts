/**
 * The service's fixed limits, and the per-address throttle of failed logins.
 */

/** Largest request body accepted (413 above it): snapshot bodies are a few hundred bytes. */
export const MAX_BODY = 64 * 1024;
/** Idle time after which a session token stops working (Redfish SessionTimeout, seconds). */
export const SESSION_TIMEOUT_S = 30 * 60;
/** Sessions open at once; a login beyond it ends the least recently used session. */
export const MAX_SESSIONS = 256;
/** Finished tasks kept for their monitors and the Tasks collection (oldest dropped first). */
export const MAX_FINISHED_TASKS = 200;
/** How long a DELETE of a task waits for the task to stop before it answers 202 (cancel still under way). */
export const CANCEL_WAIT_MS = 10_000;
/** Events kept for Last-Event-ID resumption. */
export const EVENT_BUFFER = 1000;
/** Password hashes verified at once: each Argon2id verify takes 64 MiB and ~0.1 s of a core. */
export const MAX_CONCURRENT_VERIFIES = 2;
/** Description and tag bounds of a create body. */
export const MAX_DESCRIPTION = 1024;
export const MAX_TAGS = 32;
export const MAX_TAG = 64;

/**
 * Failed logins per source address: after FAILURES within WINDOW, the address gets 429 for the rest of
 * the window. Memory is bounded (the oldest addresses are forgotten first).
 */
export class LoginThrottle {
  static readonly FAILURES = 5;
  static readonly WINDOW_MS = 60_000;
  private static readonly MAX_ADDRESSES = 10_000;
  private readonly failures = new Map<string, number[]>();

  constructor(private readonly now: () => number) {}

  /** Seconds until the address may try again, or 0 when it may now. */
  blockedFor(address: string): number {
    const recent = this.recent(address);
    if (recent.length < LoginThrottle.FAILURES) return 0;
    const oldest = recent[recent.length - LoginThrottle.FAILURES] ?? this.now();
    return Math.max(1, Math.ceil((oldest + LoginThrottle.WINDOW_MS - this.now()) / 1000));
  }

  fail(address: string): void {
    const recent = this.recent(address);
    recent.push(this.now());
    this.failures.delete(address);
    this.failures.set(address, recent);
    if (this.failures.size > LoginThrottle.MAX_ADDRESSES) {
      const first = this.failures.keys().next().value;
      if (first !== undefined) this.failures.delete(first);
    }
  }

  private recent(address: string): number[] {
    const since = this.now() - LoginThrottle.WINDOW_MS;
    return (this.failures.get(address) ?? []).filter((t) => t > since);
  }
}
