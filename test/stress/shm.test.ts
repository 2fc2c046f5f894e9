// Soak for shared memory and the resource tracker: many processes creating and
// unlinking segments at once, and program trees killed again and again; at the
// end /dev/shm must hold nothing any of them created (leaks.ts checks).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

import { Process } from 'posix-multiprocessing';
import * as shmTargets from '../fixtures/shm.mjs';

const tree = path.join(__dirname, '..', 'fixtures', 'programs', 'shm-tree.mjs');

describe('shared memory soak', () => {
  it('four processes x 2000 create/attach/unlink cycles', async () => {
    const procs = Array.from({ length: 4 }, () => new Process({ target: shmTargets.churn, args: [2000] }));
    for (const p of procs) p.start();
    expect(await Promise.all(procs.map((p) => p.join(300)))).toEqual([0, 0, 0, 0]);
  });

  it('ten program trees killed with SIGKILL leave nothing in /dev/shm', async () => {
    const names: string[] = [];
    for (let round = 0; round < 10; round++) {
      const child = spawn(process.execPath, [tree], { stdio: ['ignore', 'pipe', 'ignore'], detached: true });
      let out = '';
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d) => {
          out += d;
          if (out.split('\n').filter(Boolean).length >= 3) resolve();
        });
        child.on('close', () => reject(new Error(`tree ended early: ${out}`)));
      });
      for (const line of out.split('\n').filter(Boolean)) names.push(...JSON.parse(line).names);
      process.kill(-child.pid!, 'SIGKILL');
      await new Promise((r) => child.once('close', r));
    }
    const deadline = Date.now() + 10_000;
    while (names.some((n) => fs.existsSync(`/dev/shm/${n}`)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(names.filter((n) => fs.existsSync(`/dev/shm/${n}`))).toEqual([]);
  });
});
