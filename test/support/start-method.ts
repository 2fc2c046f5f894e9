// The start-method matrix's setup file (vitest.config.mjs, project 'spawn'):
// with PMP_TEST_START_METHOD set, this test file's process uses that method by
// default, and so do the Node programs its tests start (their children too),
// through NODE_OPTIONS=--require start-method-preload.cjs.
import * as path from 'node:path';
import { afterAll, expect } from 'vitest';

import { setStartMethod, type StartMethod } from 'posix-multiprocessing';
import { forkservers } from './proc';

const method = process.env.PMP_TEST_START_METHOD as StartMethod | undefined;
if (method) {
  setStartMethod(method);
  const preload = path.join(__dirname, 'start-method-preload.cjs');
  if (!(process.env.NODE_OPTIONS ?? '').includes(preload)) {
    process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --require ${JSON.stringify(preload)}`.trim();
  }
  // A server, once booted, lives as long as this process: none may have run
  // here, or the matrix did not test what it says.
  if (method === 'spawn') {
    afterAll(() => expect(forkservers(), 'a forkserver ran in the spawn project').toEqual([]));
  }
}
