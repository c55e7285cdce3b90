import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Tests spawn qemu-img and the CLI; two workers match the two cores of CI.
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
