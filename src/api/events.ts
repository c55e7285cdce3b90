/**
 * `cb.events`: what changed in the home, from any process (src/store/events.ts). A long-running
 * program (the REST service) follows it to learn of snapshots made, restored or deleted by the CLI or
 * a scheduler on the same home.
 */
import type { Session } from './session.js';
import type { HomeEvent, HomeEventTail } from './types.js';

export class Events {
  constructor(private readonly s: Session) {}

  /**
   * Follows the home's event log from now on. The tail's read() returns the events appended since the
   * last read, oldest first; onAppend(fn) calls fn when the log may have grown. close() stops it (so
   * does closing this Clonebox).
   */
  tail(): Promise<HomeEventTail> {
    return this.s.run(async () => {
      const { EventTail } = await import('../store/events.js');
      const t = await EventTail.open(this.s.home);
      let closed = false;
      const close = async () => {
        if (closed) return;
        closed = true;
        await t.close();
      };
      this.s.onClose(close);
      return {
        read: (): Promise<HomeEvent[]> => t.read(),
        onAppend: (fn: () => void) => t.onAppend(fn),
        close,
      };
    });
  }
}
