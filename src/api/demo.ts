/** `cb.demo`: the whole story on a generated disk, in a home of its own (src/demo/story.ts). */
import type { Session } from './session.js';
import type { DemoOptions, DemoResult } from './types.js';

export class Demo {
  constructor(private readonly s: Session) {}

  run(opts: DemoOptions = {}): Promise<DemoResult> {
    return this.s.run(async () => {
      const { runDemo } = await import('../demo/story.js');
      return runDemo({ ...(opts.dir ? { dir: opts.dir } : {}), ...(opts.onLog ? { log: opts.onLog } : {}) });
    });
  }
}
