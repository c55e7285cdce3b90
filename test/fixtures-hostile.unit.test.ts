/**
 * The committed hostile inputs (fixtures/hostile: qcow2 images and bundles that once broke a decoder,
 * or would) are refused with their exact error code, quickly, and an import leaves nothing behind.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadKeySource } from '../src/bundle/crypto.js';
import { importBundle } from '../src/bundle/import.js';
import { CloneboxError } from '../src/errors.js';
import { Chain } from '../src/qcow2/chain.js';
import { resolveHome } from '../src/store/home.js';
import { rejectionCode } from './helpers/errors.js';
import { FIXTURES, fixtureFile, readExpected } from './helpers/fixtures.js';
import { outcome } from './helpers/hostile.js';
import { useTempDir } from './helpers/temp.js';

interface HostileCase {
  /** Relative to fixtures/hostile. */
  file: string;
  /** qcow2: opened and read as an image; chain: opened as a backing chain; bundle: imported. */
  kind: 'qcow2' | 'chain' | 'bundle';
  code: string;
  why: string;
  /** For bundles: the key file (relative to fixtures/hostile), or null for none. */
  key?: string | null;
}

const cases = await readExpected<HostileCase[]>('hostile');
const tmp = useTempDir('clonebox-fixtures-hostile-');
let n = 0;

describe('hostile fixtures', () => {
  it('cover images, chains and bundles', () => {
    for (const kind of ['qcow2', 'chain', 'bundle'])
      expect(
        cases.some((c) => c.kind === kind),
        kind,
      ).toBe(true);
  });

  for (const c of cases) {
    it(`${c.file}: ${c.why} -> ${c.code}`, async () => {
      if (c.kind === 'qcow2') {
        const o = await outcome(await fixtureFile('hostile', c.file, tmp()));
        expect(o.ok ? 'read fine' : o.code).toBe(c.code);
      } else if (c.kind === 'chain') {
        expect(await rejectionCode(Chain.open(path.join(FIXTURES, 'hostile', c.file)))).toBe(c.code);
      } else {
        const home = resolveHome(path.join(tmp(), 'home'));
        const vm = `v${n++}`;
        const dir = path.join(tmp(), `disks-${vm}`);
        // git keeps no 0600 mode: the committed test keys are group-readable on checkout.
        const key = c.key ? await loadKeySource({ keyFile: path.join(FIXTURES, 'hostile', c.key), allowInsecureKeyFile: true }) : null;
        const err = await importBundle(home, vm, { input: path.join(FIXTURES, 'hostile', c.file), key, dir }).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(CloneboxError);
        expect((err as CloneboxError).code, (err as Error).message).toBe(c.code);
        expect(existsSync(dir), 'disks dir left behind').toBe(false);
        expect(existsSync(path.join(home.vmsDir, vm)), 'VM dir left behind').toBe(false);
      }
    });
  }
});
