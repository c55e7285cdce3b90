/**
 * Adaptive compression of served frames, modelled on `zstd --adapt`: the level of the next frame
 * follows which end of the serving pipeline waits. One FramePace per block channel (a peer's link):
 *
 * - the sender waited for the wire (the stream asked it to wait for a drain) while frames were ready:
 *   the link is slower than the compressor, so spend more CPU to send fewer bytes (level up);
 * - the sender waited for frames (reading and compressing are behind) while the wire was free: the
 *   link outruns the compressor, so compress less (level down, down to raw).
 *
 * A peer on this machine (loopback) adapts between raw and 3 only: there the sharer's CPU is the
 * receiver's, so a receiver slowed by the sharer's compression looks like a slow wire, and climbing
 * made both slower (bench/README.md, issue #16). The bench's links are namespaces on one machine too,
 * which the sharer cannot tell from a LAN.
 *
 * Decisions are made per window of frames, from the time each side waited in that window; a window
 * where neither side clearly dominates keeps the level. One more bound, from the measured send rate:
 * a level is only used while one core compresses several times faster at it than the frames leave
 * (SPEED). Without it, on one machine (loopback, or namespaces sharing the cores) a receiver slowed by
 * the CPU the sharer spends looks like a slow wire and pushed the level to 9, which made both slower.
 * Across a link (not a peer on this machine) that bound takes the level down to 1 but never to raw:
 * only waiting for frames does, since raw doubles the bytes on the wire. The receiver needs nothing: every frame says
 * its codec (raw or zstd, any level decodes with the same decoder), and every block is verified as
 * before. Levels climb one step at a time, so a burst of waiting costs at most a window of frames at
 * a poorer level.
 */

import { trace } from './trace.js';

/** Steps of the ladder: 0 means raw (no compression), others are zstd levels. */
export const LEVELS = [0, 1, 3, 6, 9] as const;
/** Where a channel starts: the bundle's default, zstd 3. */
const START = 2;
/**
 * Conservative raw MiB/s of one core at each step (zstd on mixed data; raw is free), and how many times
 * faster than the frames leave it must be to step up, or may be before stepping down.
 */
const SPEED = [Infinity, 300, 200, 70, 40];
/**
 * CPU per byte of each step relative to level 1 (zstd CLI on 64 MiB of the sync bench's layer data,
 * bench/README.md): with the measured speed at the current level it predicts the next level's.
 */
const COST = [0, 1, 2.3, 5.6, 12];
const HEADROOM_UP = 2;
const HEADROOM_DOWN = 1.5;
/**
 * Frames per decision, and how much of the rate estimate the newest window makes: a receiver's window
 * of 16 MiB makes sends bursty, so a window of a few frames alone saw anything from 6 to 450 MiB/s
 * on one pull (bench/README.md).
 */
const WINDOW = 8;
const RATE_WEIGHT = 0.5;
/** One side's waiting must exceed the other's by this factor (and a floor) to move the level. */
const DOMINANCE = 2;
const FLOOR_MS = 2;

export interface PaceSnapshot {
  level: number;
  frames: number;
  /** Frames sent at each level of LEVELS. */
  byLevel: number[];
}

export class FramePace {
  private step: number;
  private frames = 0;
  private wireWait = 0;
  private frameWait = 0;
  private busy = 0;
  private raw = 0;
  private rate = -1;
  /** Measured raw MiB/s of one compression at the current level (smoothed; -1: none yet). */
  private speed = -1;
  private compressMs = 0;
  private compressed = 0;
  private inWindow = 0;
  private readonly byLevel: number[] = LEVELS.map(() => 0);

  private readonly top: number;
  /** A peer on this machine (maxLevel below the ladder's top): the send rate alone may take it to raw. */
  private readonly local: boolean;

  /**
   * `fixed`: a level of LEVELS to use always (CLONEBOX_SYNC_LEVEL), or null to adapt. `maxLevel`: the
   * highest level to adapt to (a peer on this machine: 3, see BlockChannel.attach).
   */
  constructor(
    private readonly fixed: number | null = null,
    maxLevel: number = LEVELS[LEVELS.length - 1]!,
  ) {
    const i = fixed === null ? -1 : LEVELS.indexOf(fixed as (typeof LEVELS)[number]);
    let top = 0;
    for (let k = 0; k < LEVELS.length; k++) if (LEVELS[k]! <= maxLevel) top = k;
    this.top = top;
    this.local = top < LEVELS.length - 1;
    this.step = i >= 0 ? i : Math.min(START, this.top);
  }

  /** zstd level for the next frame (0: send it raw). */
  level(): number {
    return LEVELS[this.step]!;
  }

  /**
   * One frame of `rawBytes` was sent at `level`: `frameWaitMs` is how long the sender waited for it to
   * be ready (read and compressed), `wireWaitMs` how long it then waited for the stream to take more.
   */
  sent(level: number, rawBytes: number, frameWaitMs: number, wireWaitMs: number, compressMs?: number): void {
    this.frames++;
    const i = LEVELS.indexOf(level as (typeof LEVELS)[number]);
    if (i >= 0) this.byLevel[i]!++;
    if (this.fixed !== null) return;
    this.frameWait += frameWaitMs;
    this.wireWait += wireWaitMs;
    this.busy += frameWaitMs + wireWaitMs;
    this.raw += rawBytes;
    if (compressMs !== undefined && level === this.level() && level > 0) {
      this.compressMs += compressMs;
      this.compressed += rawBytes;
    }
    if (++this.inWindow < WINDOW) return;
    const was = this.step;
    // Raw MiB/s leaving while the sender was busy (idle time between requests does not count).
    const now = this.busy > 0 ? this.raw / 1048576 / (this.busy / 1000) : 1e6;
    this.rate = this.rate < 0 ? now : RATE_WEIGHT * now + (1 - RATE_WEIGHT) * this.rate;
    const rate = this.rate;
    if (this.compressMs > 0) {
      const now = this.compressed / 1048576 / (this.compressMs / 1000);
      this.speed = this.speed < 0 ? now : RATE_WEIGHT * now + (1 - RATE_WEIGHT) * this.speed;
    }
    // The next level's speed: measured at this one and scaled by the cost ratio (a loaded sharer
    // compresses slower, so it climbs less), never above the static bound.
    const next = this.step + 1;
    const nextSpeed =
      next > this.top ? 0 : this.speed > 0 && this.step > 0 ? Math.min(SPEED[next]!, (this.speed * COST[this.step]!) / COST[next]!) : SPEED[next]!;
    const wireBound = this.wireWait > FLOOR_MS && this.wireWait > DOMINANCE * this.frameWait;
    const frameBound = this.frameWait > FLOOR_MS && this.frameWait > DOMINANCE * this.wireWait;
    // Raw doubles the bytes on a link, so across one the last step down needs the sender to have waited
    // for frames: the rate alone is measured over the sender's busy time only, and a stream that
    // rarely makes it wait (its buffers take whole frames) looks fast on any link, even 100 Mbit/s.
    const rateBound = rate * HEADROOM_DOWN > SPEED[this.step]! && (this.step > 1 || this.local);
    if (this.step > 0 && (frameBound || rateBound)) this.step--;
    else if (wireBound && next <= this.top && rate * HEADROOM_UP < nextSpeed) this.step++;
    if (this.step !== was)
      trace(
        `pace: level ${LEVELS[was]} -> ${this.level()} (${rate.toFixed(0)} MiB/s raw, compressing at ${this.speed.toFixed(0)} MiB/s; waited ${Math.round(this.frameWait)} ms for frames, ${Math.round(this.wireWait)} ms for the wire)`,
      );
    if (this.step !== was) this.speed = -1; // measured anew at the new level
    this.busy = 0;
    this.raw = 0;
    this.compressMs = 0;
    this.compressed = 0;
    this.inWindow = 0;
    this.frameWait = 0;
    this.wireWait = 0;
  }

  snapshot(): PaceSnapshot {
    return { level: this.level(), frames: this.frames, byLevel: [...this.byLevel] };
  }
}

/**
 * The level setting from the environment: CLONEBOX_SYNC_LEVEL=raw|1|3|6|9 pins it (for measurements and
 * for users who know their link), anything else or unset adapts.
 */
export function fixedLevelFromEnv(env: NodeJS.ProcessEnv = process.env): number | null {
  const v = env.CLONEBOX_SYNC_LEVEL;
  if (v === undefined || v === '' || v === 'auto') return null;
  const n = v === 'raw' ? 0 : Number(v);
  return (LEVELS as readonly number[]).includes(n) ? n : null;
}
