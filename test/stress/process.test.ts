// Stress (npm run test:stress): a thousand of our children interleaved with a
// thousand child_process children, in waves; every exit is reported to the
// right owner and nothing is left behind.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

import { Process } from 'posix-multiprocessing';
import * as targets from '../fixtures/targets.mjs';
import { childPids } from '../support/proc';

const WAVES = 20;
const PER_WAVE = 50;

describe('process stress', () => {
  it(`${WAVES * PER_WAVE} Process children interleaved with as many child_process children`, async () => {
    for (let wave = 0; wave < WAVES; wave++) {
      const ours = Array.from({ length: PER_WAVE }, (_, i) => new Process({ target: targets.exitWith, args: [(wave + i) % 7] }));
      const theirs: Promise<number | null>[] = [];
      for (let i = 0; i < PER_WAVE; i++) {
        ours[i].start();
        const child = spawn('/bin/sh', ['-c', `exit ${20 + ((wave + i) % 5)}`], { stdio: 'ignore' });
        theirs.push(new Promise((resolve, reject) => {
          child.on('error', reject);
          child.on('exit', resolve);
        }));
      }
      const [a, b] = await Promise.all([Promise.all(ours.map((p) => p.join(120))), Promise.all(theirs)]);
      expect(a).toEqual(ours.map((_, i) => (wave + i) % 7));
      expect(b).toEqual(theirs.map((_, i) => 20 + ((wave + i) % 5)));
      for (const p of ours) p.close();
    }
    // The resource tracker and this thread's forkserver are the children that
    // outlive the waves, on purpose.
    const tracker = (globalThis as Record<symbol, { pid?: number } | undefined>)[
      Symbol.for('posix-multiprocessing.resource-tracker')
    ];
    const server = (globalThis as Record<symbol, { forkserver?: { pid: number } | null } | undefined>)[
      Symbol.for('posix-multiprocessing.context')
    ]?.forkserver;
    expect(childPids().filter((pid) => pid !== tracker?.pid && pid !== server?.pid)).toEqual([]);
  });
});
