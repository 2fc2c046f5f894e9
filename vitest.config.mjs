import { defineConfig } from 'vitest/config';

// Real child processes everywhere: test files run in forked workers (a child
// cannot import a file that vitest transformed inside its own worker, so child
// targets live in test/fixtures/*.mjs), and every file ends with leak checks.
export default defineConfig({
  test: {
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    include: ['test/**/*.test.ts'],
    exclude: ['test/stress/**'],
    setupFiles: ['test/support/leaks.ts'],
    // The package is loaded by Node itself, exactly as users load it.
    server: { deps: { external: [/\/dist\//, /\/test\/fixtures\//] } },
    testTimeout: 30_000,
    hookTimeout: 30_000,
    teardownTimeout: 10_000,
  },
});
