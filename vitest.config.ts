import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    setupFiles: ['./src/polyfill.ts'],
    globalSetup: ['./test/global-setup.ts'],
    include: ['test/**/*.test.ts'],
    // Integration tests start real registries and agents; they need room on a 2-core machine.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
  },
});
