// Stress: the default suite's pending-wait scenarios (test/waits.test.ts) at
// three times the count: 120,000 event.wait(), 30,000 acquire() on distinct
// Locks and 30,000 on one, 9,000 distinct words, 6,000 POSIX semaphore waits;
// and the one-word servers (PMP_FUTEX_WAITV=0, as without futex_waitv) with
// the default counts. Threads stay bounded and every wait ends right.
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const program = path.resolve('test/fixtures/programs/many-waits.mjs');
const programs = path.resolve('test/fixtures/programs');

function run(args: string[], env: NodeJS.ProcessEnv, script = program): Promise<{ code: number | string; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [script, ...args], { env, timeout: 500_000, killSignal: 'SIGKILL', maxBuffer: 1 << 24 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as any).code ?? (err as any).signal ?? -1) : 0, stdout, stderr }),
    );
  });
}

function check(stdout: string, scale: number) {
  const out = JSON.parse(stdout.trim().split('\n').pop()!);
  const bound = out.base + 12;
  for (const key of ['event', 'distinctLocks', 'sharedLock', 'manyWords']) expect(out[key].peak, key).toBeLessThanOrEqual(bound);
  expect(out.event.allTrue).toBe(true);
  expect(out.distinctLocks.granted).toBe(10_000 * scale);
  expect(out.sharedLock.granted).toBe(10_000 * scale);
  expect(out.manyWords.setTrue).toBe(true);
  expect(out.manyWords.timedFalse).toBe(true);
  expect(out.manyWords.timedMinMs).toBeGreaterThanOrEqual(149);
  expect(out.timeouts.timedFalse && out.timeouts.abortedAll && out.timeouts.restTrue).toBe(true);
  for (const count of [1, 20]) {
    expect(out.posixSemaphores[count].peak).toBeLessThanOrEqual(bound);
    expect(out.posixSemaphores[count].allTrue).toBe(true);
    expect(out.posixSemaphores[count].left).toEqual([3]);
  }
}

describe('pending async waits at scale', () => {
  it('three times the default counts: 120,000 pending event.wait() and the rest', async () => {
    const r = await run(['--scale=3'], process.env);
    expect(r.code, r.stderr).toBe(0);
    check(r.stdout, 3);
  }, 520_000);

  it('one word per server (no futex_waitv): the poller takes the rest', async () => {
    const r = await run([], { ...process.env, PMP_FUTEX_WAITV: '0' });
    expect(r.code, r.stderr).toBe(0);
    check(r.stdout, 1);
  }, 520_000);

  it('one word per server: a wake taken for an ended wait still reaches the Sync waiter in another process', async () => {
    const variants = ['abort', 'timeout', 'close', 'local'];
    const env = { ...process.env, PMP_FUTEX_WAITV: '0' };
    const runs = await Promise.all(variants.map((v) => run([v], env, path.join(programs, 'stale-wake.mjs'))));
    runs.forEach((r, i) => {
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({ variant: variants[i], code: 0, value: 0 });
    });
  }, 60_000);

  it('100,000 pending waits on distinct words: bounded idle CPU, a late change still seen', async () => {
    const r = await run(['100000'], process.env, path.join(programs, 'idle-waits.mjs'));
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.endedWhileIdle).toBe(0);
    expect(out.cpuPercent).toBeLessThan(10);
    expect(out.lateResult).toBe('not-equal');
    // 100,000 words at 128 per 2 ms tick: a round takes ~1.6 s.
    expect(out.lateMs).toBeLessThan(5000);
  }, 60_000);
});
