// 4 producer x 4 consumer processes x 100,000 messages each: every message
// received exactly once, per-producer order kept; then the same with a consumer
// SIGKILLed in the middle.
import { describe, expect, it } from 'vitest';

import { Process, Queue } from 'posix-multiprocessing';
import * as fx from '../fixtures/pipes.mjs';

const PRODUCERS = 4;
const CONSUMERS = 4;
const N = 100_000;

describe('queues under load', () => {
  it('4 producers x 4 consumers x 100,000 messages: exactly once, FIFO per producer', async () => {
    const q = new Queue(1000);
    const results = new Queue();
    const consumers = Array.from({ length: CONSUMERS }, () => new Process({ target: fx.consumeSync, args: [q, results] }));
    const producers = Array.from({ length: PRODUCERS }, (_, id) => new Process({ target: fx.produceSync, args: [q, id, N] }));
    for (const p of [...consumers, ...producers]) p.start();
    for (const p of producers) expect(await p.join()).toBe(0);
    for (let c = 0; c < CONSUMERS; c++) await q.put(null);
    const seen = Array.from({ length: PRODUCERS }, () => new Uint8Array(N));
    for (let c = 0; c < CONSUMERS; c++) {
      const { got } = (await results.get({ timeout: 120 })) as { got: number[] };
      const last = new Array(PRODUCERS).fill(-1);
      for (let k = 0; k < got.length; k += 2) {
        const p = got[k];
        const i = got[k + 1];
        expect(i > last[p]).toBe(true);
        last[p] = i;
        seen[p][i]++;
      }
    }
    for (const s of seen) expect(s.every((x) => x === 1)).toBe(true);
    for (const p of consumers) expect(await p.join()).toBe(0);
    q.close();
    results.close();
  }, 600_000);

  it('a consumer SIGKILLed mid-run does not wedge the others', async () => {
    const q = new Queue(100);
    const reports = new Queue();
    const consumers = Array.from({ length: CONSUMERS }, () => new Process({ target: fx.consumeAndReport, args: [q, reports] }));
    const producers = Array.from({ length: 2 }, (_, id) => new Process({ target: fx.produceSync, args: [q, id, 20_000] }));
    for (const p of [...consumers, ...producers]) p.start();
    const got: string[] = [];
    while (got.length < 5_000) {
      const m = (await reports.get({ timeout: 60 })) as { p: number; i: number };
      got.push(`${m.p}:${m.i}`);
    }
    consumers[0].kill();
    expect(await consumers[0].join()).toBe(-9);
    for (const p of producers) expect(await p.join(120)).toBe(0);
    for (let c = 1; c < CONSUMERS; c++) await q.put(null, { timeout: 60 });
    let ended = 0;
    while (ended < CONSUMERS - 1) {
      const m = (await reports.get({ timeout: 60 })) as { p: number; i: number } | null;
      if (m === null) ended++;
      else got.push(`${m.p}:${m.i}`);
    }
    for (const p of consumers.slice(1)) expect(await p.join()).toBe(0);
    expect(new Set(got).size).toBe(got.length);
    expect(got.length).toBeGreaterThanOrEqual(40_000 - 1);
    q.close();
    reports.close();
  }, 600_000);
});
