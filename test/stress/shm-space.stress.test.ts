// Issue #12's reproducer at its full count: 1,000 queues, each used for 3 x 1 MB
// and closed in turn, in a 64 MB /dev/shm of its own (no SIGBUS, one ring's
// worth of tmpfs at a time) and on the machine's /dev/shm (one ring mapped at a
// time, resident shared memory flat, with no GC asked for).
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

import { inSmallShm, lastJson, noSmallShm, run } from '../support/small-shm';

const program = path.join(__dirname, '..', 'fixtures', 'programs', 'shm-space.mjs');
const QUEUES = 1000;

const why = noSmallShm();
if (why) console.warn(`skipped: the 64 MB /dev/shm run (${why})`);

describe('1,000 queues opened, used and closed in turn', () => {
  it.skipIf(why !== null)('in a 64 MB /dev/shm: every part of the program ends normally, nothing left behind', async () => {
    const r = await inSmallShm(program, [String(QUEUES)]);
    expect({ code: r.code, signal: r.signal, stderr: r.stderr.slice(-2000) }).toEqual({ code: 0, signal: null, stderr: '' });
    const out = lastJson(r.stdout);
    expect(out.loop).toMatchObject({ done: QUEUES, usedAfter: 0, maxMaps: 1, mapsAfter: 0 });
    expect(out.loop.maxUsed).toBeLessThanOrEqual(5 * 1024 * 1024);
    expect(out.recovered).toEqual({ ok: true });
    expect(out.left).toEqual([]);
  });

  it('on this machine: one ring mapped at a time and resident shared memory flat, without GC', async () => {
    const r = await run(process.execPath, [program, String(QUEUES), 'loop']);
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 0, signal: null });
    const out = lastJson(r.stdout);
    expect(out.loop).toMatchObject({ done: QUEUES, maxMaps: 1, mapsAfter: 0 });
    // Before the fix: +582 MB per 200 queues.
    expect(out.loop.maxRssShmem).toBeLessThanOrEqual(5 * 1024 * 1024);
  });
});
