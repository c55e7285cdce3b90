/**
 * The adaptive compression pace of served frames (src/sync/pace.ts), fed with the waits a block
 * channel measures: a slow wire with frames ready climbs to high levels, a fast wire that waits for
 * frames comes down to raw, the send rate bounds the climb, and CLONEBOX_SYNC_LEVEL pins the level.
 * The end-to-end side (frames at every level and raw pulled, verified and written) is in
 * test/sync-blocks.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { FramePace, fixedLevelFromEnv, LEVELS } from '../src/sync/pace.js';

const MiB = 1024 * 1024;

/** Feeds `frames` frames of 2 MiB at the pace's current level; `ms` gives the waits of one frame. */
function feed(p: FramePace, frames: number, ms: (level: number) => { frame: number; wire: number; compress?: number }): number[] {
  const seen: number[] = [];
  for (let i = 0; i < frames; i++) {
    const level = p.level();
    seen.push(level);
    const w = ms(level);
    p.sent(level, 2 * MiB, w.frame, w.wire, w.compress);
  }
  return seen;
}

describe('FramePace', () => {
  it('starts at zstd 3, the bundle default', () => {
    expect(new FramePace().level()).toBe(3);
  });

  it('climbs on a slow wire while frames are ready (100 Mbit/s: ~25 MiB/s raw), but not past what the send rate allows', () => {
    const p = new FramePace();
    // 2 MiB per 80 ms = 25 MiB/s raw, all of it waiting for the wire.
    const seen = feed(p, 40, () => ({ frame: 0, wire: 80 }));
    expect(seen[0]).toBe(3);
    expect(p.level()).toBe(6);
    expect(Math.max(...seen)).toBe(6); // 9 needs a slower wire than 25 MiB/s (SPEED / HEADROOM_UP)
  });

  it('does not climb when its own compression is slow (a loaded sharer, or one machine), however slow the wire looks', () => {
    const loaded = new FramePace();
    // 25 MiB/s leaving; zstd 3 measured at 2 MiB per 60 ms (33 MiB/s): zstd 6 would be ~14 MiB/s.
    feed(loaded, 40, () => ({ frame: 0, wire: 80, compress: 60 }));
    expect(loaded.level()).toBe(3);
    const idle = new FramePace();
    // The same wire, zstd 3 at 2 MiB per 10 ms (200 MiB/s): zstd 6 keeps up, 9 would not.
    feed(idle, 40, (level) => ({ frame: 0, wire: 80, compress: level === 3 ? 10 : 25 }));
    expect(idle.level()).toBe(6);
  });

  it('a peer on this machine never climbs past zstd 3, however slow it looks', () => {
    const p = new FramePace(null, 3);
    feed(p, 40, () => ({ frame: 0, wire: 400 })); // 5 MiB/s raw: elsewhere this climbs to 9
    expect(p.level()).toBe(3);
    feed(p, 40, (level) => ({ frame: level === 0 ? 0 : 30, wire: 1 })); // and still comes down
    expect(p.level()).toBe(0);
  });

  it('climbs to the top on a very slow wire', () => {
    const p = new FramePace();
    feed(p, 40, () => ({ frame: 0, wire: 400 })); // 5 MiB/s raw
    expect(p.level()).toBe(LEVELS[LEVELS.length - 1]);
  });

  it('comes down to raw when the sender waits for frames, not for the wire', () => {
    const p = new FramePace();
    const seen = feed(p, 40, (level) => ({ frame: level === 0 ? 0 : 30, wire: 1 }));
    expect(p.level()).toBe(0);
    expect(seen.filter((l) => l === 0).length).toBeGreaterThan(20);
  });

  it('comes down when frames leave faster than one core compresses at this level, whoever waits', () => {
    const p = new FramePace(null, 3);
    // 2 MiB per 8 ms = 250 MiB/s raw: zstd 3 and 1 would hold it up.
    feed(p, 16, () => ({ frame: 0, wire: 8 }));
    expect(p.level()).toBe(0);
  });

  it('across a link, the send rate alone takes it down to zstd 1 but never to raw (raw doubles the bytes)', () => {
    const p = new FramePace();
    // The same 250 MiB/s while the sender waits for the wire only: a stream whose buffers take whole
    // frames looks this fast even at 100 Mbit/s.
    const seen = feed(p, 40, () => ({ frame: 0, wire: 8 }));
    expect(p.level()).toBe(1);
    expect(seen).not.toContain(0);
    // Waiting for frames still takes it to raw.
    feed(p, 16, (level) => ({ frame: level === 0 ? 0 : 30, wire: 1 }));
    expect(p.level()).toBe(0);
  });

  it('keeps its level when neither side clearly waits more', () => {
    const p = new FramePace();
    feed(p, 40, () => ({ frame: 20, wire: 20 })); // 50 MiB/s raw
    expect(p.level()).toBe(3);
    const s = p.snapshot();
    expect(s.frames).toBe(40);
    expect(s.byLevel[LEVELS.indexOf(3)]).toBe(40);
  });

  it('a pinned level never moves', () => {
    const p = new FramePace(0);
    feed(p, 40, () => ({ frame: 0, wire: 400 }));
    expect(p.level()).toBe(0);
    const q = new FramePace(9);
    feed(q, 40, () => ({ frame: 100, wire: 0 }));
    expect(q.level()).toBe(9);
  });

  it('reads CLONEBOX_SYNC_LEVEL: raw or a level of the ladder pins it, anything else adapts', () => {
    expect(fixedLevelFromEnv({})).toBeNull();
    expect(fixedLevelFromEnv({ CLONEBOX_SYNC_LEVEL: 'auto' })).toBeNull();
    expect(fixedLevelFromEnv({ CLONEBOX_SYNC_LEVEL: 'raw' })).toBe(0);
    expect(fixedLevelFromEnv({ CLONEBOX_SYNC_LEVEL: '1' })).toBe(1);
    expect(fixedLevelFromEnv({ CLONEBOX_SYNC_LEVEL: '9' })).toBe(9);
    expect(fixedLevelFromEnv({ CLONEBOX_SYNC_LEVEL: '4' })).toBeNull();
    expect(fixedLevelFromEnv({ CLONEBOX_SYNC_LEVEL: 'fast' })).toBeNull();
  });
});
