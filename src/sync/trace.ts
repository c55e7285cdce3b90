/**
 * Phase timings of a sync (milliseconds since the process started, so module loading counts): where
 * a sync's time goes, for profiling (see docs/sync.md). Nothing is traced until a caller hands a
 * sink (the CLI does when CLONEBOX_SYNC_TRACE=1 and prints each line on stderr).
 */
import { performance } from 'node:perf_hooks';

export type TraceSink = (ms: number, what: string) => void;

let sink: TraceSink | null = null;

/** Installs (or, with null, removes) the sink; returns the one it replaces. */
export function setTraceSink(next: TraceSink | null): TraceSink | null {
  const prev = sink;
  sink = next;
  return prev;
}

export function trace(what: string): void {
  if (sink) sink(Math.round(performance.now()), what);
}
