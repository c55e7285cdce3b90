/**
 * The committed bundles of today's format (fixtures/bundle: a three-snapshot chain, plain and
 * encrypted with a test key) must import, now and in every later version, into snapshots whose guest
 * content has the sha256 QEMU computed from the source when the bundles were made. The content is read
 * with clonebox's own chain reader, so no QEMU is needed.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadKeySource } from '../src/bundle/crypto.js';
import { importBundle } from '../src/bundle/import.js';
import { Chain } from '../src/qcow2/chain.js';
import { SnapshotManager } from '../src/snapshots/manager.js';
import { resolveHome } from '../src/store/home.js';
import { FIXTURES, readExpected } from './helpers/fixtures.js';
import { useTempDir } from './helpers/temp.js';

interface BundleFixture {
  vm: string;
  /** Oldest first. */
  snapshots: {
    name: string;
    parent: string | null;
    description: string | null;
    tags: string[];
    created_at: string;
    disks: { target: string; virtual_size: number; sha256: string }[];
  }[];
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const expected = await readExpected<BundleFixture>('bundle');
const tmp = useTempDir('clonebox-fixtures-bundle-');

describe("bundle fixtures of today's format", () => {
  it('hold a chain of at least two snapshots with data', async () => {
    expect(expected.snapshots.length).toBeGreaterThanOrEqual(2);
    expect(expected.snapshots[0]!.parent).toBeNull();
    // The encrypted bundle is not the plain one with another name.
    const plain = await readFile(path.join(FIXTURES, 'bundle', 'chain.cbx'));
    const encrypted = await readFile(path.join(FIXTURES, 'bundle', 'chain-encrypted.cbx'));
    expect(plain.includes(Buffer.from('the base system'))).toBe(true);
    expect(encrypted.includes(Buffer.from('the base system'))).toBe(false);
  });

  for (const [label, file, keyFile] of [
    ['plain', 'chain.cbx', null],
    ['encrypted', 'chain-encrypted.cbx', 'TEST-KEY-NOT-SECRET.key'],
  ] as const) {
    it(`the ${label} bundle imports byte-identically`, async () => {
      const home = resolveHome(path.join(tmp(), label));
      // git keeps no 0600 mode: the committed test key is group-readable on checkout.
      const key = keyFile === null ? null : await loadKeySource({ keyFile: path.join(FIXTURES, 'bundle', keyFile), allowInsecureKeyFile: true });
      const r = await importBundle(home, expected.vm, { input: path.join(FIXTURES, 'bundle', file), key });
      expect(r.snapshots).toEqual(expected.snapshots.map((s) => s.name));
      const views = await new SnapshotManager(home).list(expected.vm);
      expect(views.map((v) => v.name).sort()).toEqual(expected.snapshots.map((s) => s.name).sort());
      for (const s of expected.snapshots) {
        const v = views.find((x) => x.name === s.name)!;
        expect({ parent: v.parent, description: v.description, tags: v.tags, created_at: v.created_at }, s.name).toEqual({
          parent: s.parent,
          description: s.description,
          tags: s.tags,
          created_at: s.created_at,
        });
        expect(v.disks.map((d) => d.target)).toEqual(s.disks.map((d) => d.target));
        for (const d of s.disks) {
          const chain = await Chain.open(v.disks.find((x) => x.target === d.target)!.path);
          try {
            expect(chain.virtualSize).toBe(d.virtual_size);
            expect(sha256(await chain.read(0, chain.virtualSize)), `${s.name}/${d.target}`).toBe(d.sha256);
          } finally {
            await chain.close();
          }
        }
      }
    });
  }
});
