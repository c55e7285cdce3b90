/**
 * The home's event log (src/store/events.ts): appends from several writers come out of a tail in
 * order, a rotation loses nothing, and lines that are not events are skipped.
 */
import { appendFile, readFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { expect, it } from 'vitest';
import { appendEvents, EventTail } from '../src/store/events.js';
import { resolveHome } from '../src/store/home.js';
import { makeTempDir } from './helpers/temp.js';

it('a tail reads what was appended after it opened, in order, across a rotation, skipping junk', async () => {
  const home = resolveHome(await makeTempDir('clonebox-events-'));
  expect(await appendEvents(home, [{ vm: 'web', snapshot: 'before', op: 'created' }])).toBeNull();
  const tail = await EventTail.open(home);
  try {
    expect(await tail.read()).toEqual([]);
    await appendEvents(home, [
      { vm: 'web', snapshot: 'a', op: 'created' },
      { vm: 'web', snapshot: 'a', op: 'restored' },
    ]);
    const log = path.join(home.root, 'events.log');
    await appendFile(log, 'not json\n{"vm": 1}\n');
    await appendEvents(home, [{ vm: 'web', snapshot: 'b', op: 'changed' }]);
    // A rotation between two reads: the rest of the old file, then the new one.
    await appendEvents(home, [{ vm: 'web', snapshot: 'c', op: 'deleted' }]);
    await rename(log, `${log}.1`);
    await appendEvents(home, [{ vm: 'db', snapshot: 'd', op: 'created' }]);
    const got = await tail.read();
    expect(got.map((e) => `${e.op} ${e.vm}/${e.snapshot}`)).toEqual(['created web/a', 'restored web/a', 'changed web/b', 'deleted web/c', 'created db/d']);
    for (const e of got) {
      expect(e.pid).toBe(process.pid);
      expect(Number.isNaN(Date.parse(e.time))).toBe(false);
    }
    expect(await tail.read()).toEqual([]);
    expect((await readFile(`${log}.1`, 'utf8')).split('\n').filter(Boolean).length).toBe(7);
  } finally {
    await tail.close();
  }
});

it('an append that cannot be written returns a message instead of failing the operation', async () => {
  const dir = await makeTempDir('clonebox-events-');
  // The home is a file: nothing can be created under it.
  await appendFile(path.join(dir, 'file'), 'x');
  const msg = await appendEvents(resolveHome(path.join(dir, 'file')), [{ vm: 'web', snapshot: 'a', op: 'created' }]);
  expect(msg).toMatch(/^event log not written/);
});
