/**
 * The journal's driver-step results, with a fake driver (no QEMU): notes a step reports are merged into
 * the record writes that name them (also when another process rolls the commit forward), warnings reach
 * the caller, and a step that fails without acting (notTaken) undoes the operation instead of leaving a
 * commit that every later command would replay into the same failure.
 */
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CloneboxError } from '../src/errors.js';
import { resolveHome } from '../src/store/home.js';
import { Journal, journalPath, notTaken, recover, type StepHandler, type StepHandlers } from '../src/store/journal.js';
import { makeTempDir } from './helpers/temp.js';

type FakeStep = { op: 'ok'; quiesced: boolean } | { op: 'refuse' } | { op: 'fail' };

function fake(calls: FakeStep[] = []): StepHandlers {
  const h: StepHandler = async (step) => {
    const s = step as FakeStep;
    calls.push(s);
    if (s.op === 'ok') return { warnings: s.quiesced ? [] : ['not quiesced'], notes: { quiesced: s.quiesced } };
    if (s.op === 'refuse') throw notTaken(new CloneboxError('LIBVIRT_ERROR', 'libvirt refused'));
    throw new CloneboxError('LIBVIRT_TIMEOUT', 'no answer');
  };
  return new Map([['fake', async () => h]]);
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

async function setup() {
  const home = resolveHome(await makeTempDir('clonebox-journal-'));
  const rec = path.join(home.root, 'rec.json');
  return { home, rec };
}

describe('journal driver steps', () => {
  it('merges the notes a step reports into the writes that name them, and returns its warnings', async () => {
    const { home, rec } = await setup();
    const j = await Journal.begin(home, 'vm', 'op', fake());
    const r = await j.commit([
      { do: 'driver', driver: 'fake', step: { op: 'ok', quiesced: false } },
      { do: 'write_json', path: rec, value: { name: 's', quiesced: true }, notes: ['quiesced', 'absent'] },
    ]);
    expect(r).toEqual({ warnings: ['not quiesced'], notes: { quiesced: false } });
    expect(JSON.parse(await readFile(rec, 'utf8'))).toEqual({ name: 's', quiesced: false });
    expect(await exists(journalPath(home, 'vm'))).toBe(false);
  });

  it('a write whose note was never reported keeps its planned value', async () => {
    const { home, rec } = await setup();
    const j = await Journal.begin(home, 'vm', 'op', fake());
    await j.commit([{ do: 'write_json', path: rec, value: { quiesced: false }, notes: ['quiesced'] }]);
    expect(JSON.parse(await readFile(rec, 'utf8'))).toEqual({ quiesced: false });
  });

  it('a step that refuses without acting undoes the operation: announced files and the journal are gone', async () => {
    const { home, rec } = await setup();
    const calls: FakeStep[] = [];
    const j = await Journal.begin(home, 'vm', 'op', fake(calls));
    await j.willCreate(rec);
    const e = await j
      .commit([
        { do: 'write_json', path: rec, value: { state: 'creating' } },
        { do: 'driver', driver: 'fake', step: { op: 'refuse' } },
        { do: 'write_json', path: rec, value: { state: 'ready' } },
      ])
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CloneboxError);
    expect((e as CloneboxError).message).toBe('libvirt refused');
    await j.rollback(); // what the manager does after a failed commit: nothing left to do
    expect(await exists(rec)).toBe(false);
    expect(await exists(journalPath(home, 'vm'))).toBe(false);
    expect(calls).toHaveLength(1);
    expect(await recover(home, 'vm', fake())).toBe('none');
  });

  it('a refusal after an action that cannot be undone, or a failure that may have acted, stays for a roll-forward', async () => {
    for (const [first, step] of [
      [{ do: 'unlink', path: '/nonexistent-clonebox-test' }, { op: 'refuse' }],
      [null, { op: 'fail' }],
    ] as const) {
      const { home, rec } = await setup();
      const j = await Journal.begin(home, 'vm', 'op', fake());
      await j.willCreate(rec);
      const actions = [...(first ? [first] : []), { do: 'driver' as const, driver: 'fake', step }];
      await expect(j.commit(actions)).rejects.toBeInstanceOf(CloneboxError);
      expect(await exists(journalPath(home, 'vm'))).toBe(true);
    }
  });

  it('recovery in a later command: a refused step rolls the operation back, a completed one writes its notes', async () => {
    const { home, rec } = await setup();
    // A journal left in its commit phase (as by a crash), replayed with a handler that refuses.
    const j = await Journal.begin(home, 'vm', 'op', fake());
    await j.willCreate(rec);
    await j.commit([{ do: 'driver', driver: 'fake', step: { op: 'fail' } }]).catch(() => undefined);
    expect(await exists(journalPath(home, 'vm'))).toBe(true);
    const refuseAll: StepHandlers = new Map([
      [
        'fake',
        async () => async () => {
          throw notTaken(new CloneboxError('LIBVIRT_ERROR', 'still refused'));
        },
      ],
    ]);
    expect(await recover(home, 'vm', refuseAll)).toBe('rolled-back');
    expect(await exists(journalPath(home, 'vm'))).toBe(false);

    const k = await Journal.begin(home, 'vm', 'op', fake());
    await k
      .commit([
        { do: 'driver', driver: 'fake', step: { op: 'fail' } },
        { do: 'write_json', path: rec, value: { quiesced: false }, notes: ['quiesced'] },
      ])
      .catch(() => undefined);
    const doc = JSON.parse(await readFile(journalPath(home, 'vm'), 'utf8')) as { actions: { step?: unknown }[] };
    doc.actions[0]!.step = { op: 'ok', quiesced: true };
    const { writeFile } = await import('node:fs/promises');
    await writeFile(journalPath(home, 'vm'), JSON.stringify(doc));
    expect(await recover(home, 'vm', fake())).toBe('completed');
    expect(JSON.parse(await readFile(rec, 'utf8'))).toEqual({ quiesced: true });
  });
});

describe('journal progress', () => {
  const progress = async (home: ReturnType<typeof resolveHome>) => (JSON.parse(await readFile(journalPath(home, 'vm'), 'utf8')) as { done: number }).done;
  const touch = (f: string) => writeFile(f, 'x');

  it('is noted before an action on a file an unnoted action touched, and a roll-forward re-runs only distinct files', async () => {
    const { home } = await setup();
    const f = (n: string) => path.join(home.root, n);
    for (const n of ['a1', 'a2', 'x']) await touch(f(n));
    // Distinct files, then a rename whose target directory is missing (it fails, as a crash would stop it).
    const j = await Journal.begin(home, 'vm', 'op', fake());
    await expect(
      j.commit([
        { do: 'rename', from: f('a1'), to: f('b1') },
        { do: 'write_json', path: f('r1.json'), value: { n: 1 } },
        { do: 'rename', from: f('a2'), to: f('d/b2') },
      ]),
    ).rejects.toBeInstanceOf(CloneboxError);
    // Nothing noted: the first two actions are re-run by the roll-forward, and find their work done.
    expect(await progress(home)).toBe(0);
    await mkdir(f('d'));
    expect(await recover(home, 'vm', fake())).toBe('completed');
    expect([await exists(f('a1')), await exists(f('b1')), await exists(f('d/b2'))]).toEqual([false, true, true]);
    expect(JSON.parse(await readFile(f('r1.json'), 'utf8'))).toEqual({ n: 1 });

    // x -> y, then y -> z: re-running the first after the second would fail (its source and target
    // both gone), so the progress is noted between them.
    const k = await Journal.begin(home, 'vm', 'op', fake());
    await expect(
      k.commit([
        { do: 'rename', from: f('x'), to: f('y') },
        { do: 'rename', from: f('y'), to: f('e/z') },
      ]),
    ).rejects.toBeInstanceOf(CloneboxError);
    expect(await progress(home)).toBe(1);
    await mkdir(f('e'));
    expect(await recover(home, 'vm', fake())).toBe('completed');
    expect([await exists(f('x')), await exists(f('y')), await exists(f('e/z'))]).toEqual([false, false, true]);
  });
});
