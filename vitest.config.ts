import { defineConfig } from 'vitest/config';

// Two lanes, chosen by the file name:
// - `unit`: test/**/*.unit.test.ts, in-process tests that need no qemu-img/qemu-io, no libvirtd, no
//   network and no build (`npm run test:unit`, seconds). A unit test may read fixtures/ and write temp dirs.
// - `integration`: every other test/**/*.test.ts: they spawn the built CLI, the QEMU tools, a libvirtd or
//   a DHT on 127.0.0.1.
// `npm test` runs both.
export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Tests spawn qemu-img and the CLI; two workers match the two cores of CI (shared by both lanes).
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/**/*.unit.test.ts'] } },
      { extends: true, test: { name: 'integration', include: ['test/**/*.test.ts'], exclude: ['test/**/*.unit.test.ts'] } },
    ],
  },
});
