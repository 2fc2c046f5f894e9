import { defineConfig } from 'vitest/config';

// Real child processes everywhere: test files run in forked workers (a child
// cannot import a file that vitest transformed inside its own worker, so child
// targets live in test/fixtures/*.mjs), and every file ends with leak checks.
//
// A start-method matrix: the 'default' project runs every file with the
// platform's default method (forkserver on Linux); the 'spawn' project runs
// the suites for processes, synchronisation, shared memory, queues, pools and
// managers again with setStartMethod('spawn') (test/support/start-method.ts),
// in this process and in the programs the tests start. Where spawn is already
// the default (macOS) the second project would only repeat the first.
const spawnMatrix = [
  'test/process.test.ts',
  'test/process-lifecycle.test.ts',
  'test/synchronize.test.ts',
  'test/shared-memory.test.ts',
  'test/queues.test.ts',
  'test/pool.test.ts',
  'test/executor.test.ts',
  'test/manager.test.ts',
];

export default defineConfig({
  test: {
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    setupFiles: ['test/support/leaks.ts'],
    // The package is loaded by Node itself, exactly as users load it.
    server: { deps: { external: [/\/dist\//, /\/test\/fixtures\//] } },
    testTimeout: 30_000,
    hookTimeout: 30_000,
    teardownTimeout: 10_000,
    projects: [
      { extends: true, test: { name: 'default', include: ['test/**/*.test.ts'], exclude: ['test/stress/**'] } },
      ...(process.platform === 'linux'
        ? [
            {
              extends: true,
              test: {
                name: 'spawn',
                include: spawnMatrix,
                env: { PMP_TEST_START_METHOD: 'spawn' },
                setupFiles: ['test/support/start-method.ts'],
              },
            },
          ]
        : []),
    ],
  },
});
