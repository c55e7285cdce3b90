/**
 * Phase timings of a sync on stderr when CLONEBOX_SYNC_TRACE=1 (milliseconds since the process
 * started, so module loading counts): where a sync's time goes, for profiling (see docs/sync.md).
 */
import { performance } from 'node:perf_hooks';

const on = process.env.CLONEBOX_SYNC_TRACE === '1';

export function trace(what: string): void {
  if (on) process.stderr.write(`clonebox-trace ${Math.round(performance.now())} ms: ${what}\n`);
}
