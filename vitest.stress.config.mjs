import { defineConfig } from 'vitest/config';

// Long soak and stress runs (`npm run test:stress`), kept out of the default run.
export default defineConfig({
  test: {
    pool: 'forks',
    poolOptions: { forks: { maxForks: 1, minForks: 1 } },
    include: ['test/stress/**/*.test.ts'],
    setupFiles: ['test/support/leaks.ts'],
    // The package is loaded by Node itself, exactly as users load it.
    server: { deps: { external: [/\/dist\//, /\/test\/fixtures\//] } },
    testTimeout: 600_000,
    hookTimeout: 60_000,
  },
});
