/**
 * The catalog view's cache (src/sync/catalog.ts, views/<key hex>): a later view reads only the
 * entries appended since, gives the same view as a full read, and is not used when the catalog forked
 * (truncated and rewritten: another Merkle tree) or when the cache file is damaged. A real Hypercore
 * in a temporary home.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { contentId } from '../src/snapshots/identity.js';
import { resolveHome } from '../src/store/home.js';
import { Catalog, type CatalogView, syncDir } from '../src/sync/catalog.js';
import type { CatalogRecord } from '../src/sync/catalog-records.js';
import { ensureIdentity } from '../src/sync/identity.js';
import { createTeam, loadTeam } from '../src/sync/teams.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

afterAll(async () => {
  await cleanupTempDirs();
});

const digest = (n: number) => Buffer.alloc(32, n);

/** A Map entry and the Snapshot record that owns it, appended at `at`; parent: the previous one. */
function snapshot(vm: string, n: number, at: number, parent: string | null): { recs: CatalogRecord[]; id: string } {
  const id = contentId(parent, [{ target: 'vda', digest: digest(n) }]);
  const recs: CatalogRecord[] = [
    { kind: 'map', vm, target: 'vda', items: [{ kind: 'zero', offset: 0, length: 1024 * 1024 }] },
    {
      kind: 'snapshot',
      vm,
      name: `s${n}`,
      content_id: Buffer.from(id, 'hex'),
      parent: parent === null ? null : Buffer.from(parent, 'hex'),
      parent_name: parent === null ? null : `s${n - 1}`,
      type: 'disk',
      created_at: new Date(Date.UTC(2026, 0, 1, 0, n)).toISOString(),
      description: null,
      tags: [],
      auto_created: false,
      auto_policy: null,
      disks: [
        {
          target: 'vda',
          virtual_size: 1024 * 1024,
          cluster_size: 65536,
          digest: digest(n),
          data_bytes: 0,
          zero_bytes: 1024 * 1024,
          blocks: 0,
          map_start: at,
          map_count: 1,
        },
      ],
    },
  ];
  return { recs, id };
}

async function appendChain(cat: Catalog, vm: string, from: number, to: number, parent: string | null): Promise<string | null> {
  let p = parent;
  for (let n = from; n < to; n++) {
    const s = snapshot(vm, n, cat.length, p);
    await cat.append(s.recs);
    p = s.id;
  }
  return p;
}

const names = (v: CatalogView, vm: string) => (v.snapshots.get(vm) ?? []).map((s) => s.name);

async function openHome() {
  const home = resolveHome(path.join(await makeTempDir('clonebox-catalog-view-'), 'h'));
  const identity = await ensureIdentity(home, 'ws-a');
  await createTeam(home, 't');
  const team = await loadTeam(home, 't');
  return { home, open: () => Catalog.openOwn(home, team, identity) };
}

describe('the catalog view cache', () => {
  it('reads only the entries appended since the last view, and folds them the same', async () => {
    const { home, open } = await openHome();
    let cat = await open();
    await cat.append([{ kind: 'share', vm: 'dev', upto: null, at: '2026-01-01T00:00:00.000Z' }]);
    const last = await appendChain(cat, 'dev', 0, 5, null);
    const first = await cat.view();
    expect(names(first, 'dev')).toEqual(['s0', 's1', 's2', 's3', 's4']);
    await cat.close();

    cat = await open();
    const get = vi.spyOn(cat.core, 'get');
    expect(await cat.view()).toEqual(first);
    expect(get).not.toHaveBeenCalled();
    await appendChain(cat, 'dev', 5, 7, last);
    await cat.append([{ kind: 'head', vm: 'dev', content_id: null }]);
    const grown = await cat.view();
    // The 2 new snapshots (a Map entry and a record each) and the Head record: 5 entries read.
    expect(get.mock.calls.map((c) => c[0])).toEqual([11, 12, 13, 14, 15]);
    expect(names(grown, 'dev')).toEqual(['s0', 's1', 's2', 's3', 's4', 's5', 's6']);
    expect(grown.heads.get('dev')).toBeNull();
    await cat.close();
    // And a damaged cache is read around: every entry again, the same view.
    const file = path.join(syncDir(home, 't'), 'views', cat.key.toString('hex'));
    const good = await readFile(file);
    for (const bad of [Buffer.from('{}\n'), good.subarray(0, good.length - 3), Buffer.concat([good, Buffer.from('x')])]) {
      await writeFile(file, bad);
      cat = await open();
      const spy = vi.spyOn(cat.core, 'get');
      expect(await cat.view()).toEqual(grown);
      expect(spy).toHaveBeenCalledTimes(16);
      await cat.close();
    }
  });

  it('is not used once the catalog forked: truncated and rewritten, the same length', async () => {
    const { open } = await openHome();
    const cat = await open();
    try {
      await cat.append([{ kind: 'share', vm: 'dev', upto: null, at: '2026-01-01T00:00:00.000Z' }]);
      await appendChain(cat, 'dev', 0, 3, null);
      expect(names(await cat.view(), 'dev')).toEqual(['s0', 's1', 's2']);
      // Hypercore's writer may truncate its core (a new fork): the same length, other entries.
      await (cat.core as unknown as { truncate(n: number): Promise<void> }).truncate(1);
      await appendChain(cat, 'other', 0, 3, null);
      const v = await cat.view();
      expect(names(v, 'dev')).toEqual([]);
      expect(names(v, 'other')).toEqual(['s0', 's1', 's2']);
    } finally {
      await cat.close();
    }
  });

  it('still refuses a Snapshot record that points at map entries not its own, past a cached prefix', async () => {
    const { open } = await openHome();
    const cat = await open();
    try {
      await cat.append([{ kind: 'share', vm: 'dev', upto: null, at: '2026-01-01T00:00:00.000Z' }]);
      const a = snapshot('dev', 0, 1, null);
      await cat.append(a.recs);
      expect(names(await cat.view(), 'dev')).toEqual(['s0']);
      const b = snapshot('dev', 1, 1, a.id); // claims the Map entry of s0 again
      await cat.append([b.recs[1]!]);
      await expect(cat.view()).rejects.toThrow(/not its own/);
    } finally {
      await cat.close();
    }
  });
});
