// Forkserver soak (issue #13, `npm run test:stress`): 10,000 start/exit cycles
// with no hang, no zombie and no fd growth in the caller or the server; the
// server SIGKILLed under running children; the caller SIGKILLed with the server
// and children gone within 1 s; GC-heavy children started while the caller
// allocates hard. Every join has a timeout: a hang is counted, never waited out.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';

import { Process, getAllStartMethods } from 'posix-multiprocessing';
import * as fx from '../fixtures/forkserver.mjs';
import * as targets from '../fixtures/targets.mjs';
import { fdCount, forkservers, isRunning, zombieChildren } from '../support/proc';
import { startNode } from '../support/run-node';

const hasForkserver = getAllStartMethods().includes('forkserver');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-forkserver-stress-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const program = (name: string) => path.join(__dirname, '..', 'fixtures', 'programs', name);

// The caller's own kinds of fds (vitest's worker opens files of its own meanwhile).
const ours = /^(pipe:|socket:|anon_inode:)/;

function theServer(): number {
  const servers = forkservers();
  expect(servers).toHaveLength(1);
  return servers[0];
}

async function settle(check: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check() && Date.now() < deadline) await sleep(10);
}

interface Tally {
  codes: Map<number | null, number>;
  hung: number[];
  ms: number;
}

/**
 * Runs `count` forkserver children, `inFlight` at a time, each joined with a
 * timeout; a child still running then is counted as hung (and killed).
 * `stopAfterHangs`: give up early once that many have hung.
 */
async function cycle(
  count: number,
  inFlight: number,
  make: (i: number) => Process,
  { joinTimeout = 30, stopAfterHangs = Infinity } = {},
): Promise<Tally> {
  const tally: Tally = { codes: new Map(), hung: [], ms: 0 };
  const t0 = performance.now();
  let next = 0;
  const lane = async () => {
    while (next < count && tally.hung.length < stopAfterHangs) {
      const p = make(next++);
      p.start();
      const code = await p.join(joinTimeout);
      if (code === null) {
        tally.hung.push(p.pid!);
        p.kill();
        await p.join(10);
      }
      tally.codes.set(code, (tally.codes.get(code) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  tally.ms = performance.now() - t0;
  return tally;
}

describe.skipIf(!hasForkserver)('forkserver stress', () => {
  it('10,000 start/exit cycles: no hang, no zombie, no fd growth in the caller or the server', async () => {
    const make = () => new Process({ target: targets.noop, startMethod: 'forkserver' });
    // Warm up: the server runs, and every lazily opened fd of the caller is open.
    await cycle(50, 4, make);
    const server = theServer();
    await settle(() => zombieChildren(server).length === 0, 2000);
    const before = { caller: fdCount('self', ours), server: fdCount(server) };

    const tally = await cycle(10_000, 4, make);
    console.log(`10,000 forkserver cycles (4 in flight): ${(tally.ms / 1000).toFixed(1)} s, ${(tally.ms / 10_000).toFixed(2)} ms a cycle`);
    expect(tally.hung).toEqual([]);
    expect([...tally.codes]).toEqual([[0, 10_000]]);

    expect(theServer()).toBe(server); // the same server throughout
    await settle(() => zombieChildren(server).length === 0 && fdCount(server) <= before.server, 3000);
    expect(zombieChildren(server)).toEqual([]);
    expect(zombieChildren()).toEqual([]);
    expect({ caller: fdCount('self', ours), server: fdCount(server) }).toEqual(before);
  }, 1_800_000);

  it('the server SIGKILLed while children run (20 rounds): they die, and the next start() works', async () => {
    for (let round = 0; round < 20; round++) {
      const children = Array.from({ length: 8 }, (_, i) => {
        const p = new Process({ target: targets.sleepFor, args: [60], daemon: i % 2 === 1, startMethod: 'forkserver' });
        p.start();
        return p;
      });
      const server = theServer();
      process.kill(server, 'SIGKILL');
      const codes = await Promise.all(children.map((p) => p.join(5)));
      // Each dies of its own death signal: SIGTERM for non-daemons, SIGKILL for daemons.
      expect(codes).toEqual(children.map((p) => (p.daemon ? -9 : -15)));
      await settle(() => !children.some((p) => isRunning(p.pid!)) && !isRunning(server), 2000);
      expect(children.filter((p) => isRunning(p.pid!))).toEqual([]);
      expect(isRunning(server)).toBe(false);

      const after = new Process({ target: targets.exitWith, args: [round], startMethod: 'forkserver' });
      after.start();
      expect(await after.join(30)).toBe(round);
      expect(theServer()).not.toBe(server);
    }
  }, 300_000);

  it('the caller SIGKILLed (10 rounds, 16 children each): the server and every child are gone within 1 s', async () => {
    const took: number[] = [];
    for (let round = 0; round < 10; round++) {
      const dir = fs.mkdtempSync(path.join(tmp, 'orphans-'));
      const caller = startNode(program('fs-orphans.mjs'), ['forkserver', dir, '16']);
      const { children, servers } = await caller.line<{ children: number[]; servers: number[] }>((v) => 'children' in v, 60_000);
      const all = [...children, ...servers];
      expect(servers).toHaveLength(1);
      expect(all.filter(isRunning)).toEqual(all);
      const t0 = performance.now();
      caller.kill('SIGKILL');
      await caller.ended;
      await settle(() => !all.some(isRunning), 5000);
      took.push(performance.now() - t0);
      expect(all.filter(isRunning)).toEqual([]);
    }
    console.log(`caller SIGKILLed: server and 16 children gone after ${took.map((t) => t.toFixed(0)).join(', ')} ms`);
    expect(Math.max(...took)).toBeLessThan(1000);
  }, 300_000);

  it('1,000 GC-heavy children (20 MB each, young and old generation collected) while the caller allocates hard: 1,000 clean exits', async () => {
    // The caller allocates and drops objects all the time, on the thread that starts the children.
    let ballast: object[] = [];
    const busy = setInterval(() => {
      for (let i = 0; i < 20_000; i++) ballast.push({ i, s: `b${i}` });
      if (ballast.length > 400_000) ballast = [];
    }, 1);
    try {
      // A window of 100 rounds (~6 MB) keeps objects alive long enough to be promoted.
      const tally = await cycle(1000, 2, () => new Process({ target: fx.churn, args: [20, 100], startMethod: 'forkserver' }), {
        joinTimeout: 30,
        stopAfterHangs: 5,
      });
      console.log(`1,000 GC-heavy children: ${(tally.ms / 1000).toFixed(1)} s; exit codes ${JSON.stringify([...tally.codes])}`);
      expect(tally.hung).toEqual([]);
      expect([...tally.codes]).toEqual([[0, 1000]]);
    } finally {
      clearInterval(busy);
      ballast = [];
    }
  }, 900_000);

  it('20 long-running children whose old generation is collected five times or more (400 MB each): 20 clean exits', async () => {
    // A forked child that runs long enough for a few Mark-Compacts, as a pool
    // worker does. Stops at the third hang: each costs the join timeout.
    const tally = await cycle(20, 2, () => new Process({ target: fx.churn, args: [400, 300], startMethod: 'forkserver' }), {
      joinTimeout: 60,
      stopAfterHangs: 3,
    });
    console.log(`20 long GC-heavy children: ${(tally.ms / 1000).toFixed(1)} s; exit codes ${JSON.stringify([...tally.codes])}`);
    expect(tally.hung).toEqual([]);
    expect([...tally.codes]).toEqual([[0, 20]]);
  }, 900_000);
});
