import { describe, it } from 'vitest';

import { chaos } from '../support/chaos';

describe('Pool under a storm of kills', () => {
  // Issue 6's chaos run: a worker SIGKILLed every 50 ms. A worker must boot
  // (a fresh Node, ~50 ms on an idle machine) faster than it is killed for
  // tasks to succeed; the one a dead worker was running fails with WorkerCrashedError.
  it('10,000 tasks while a random worker is SIGKILLed every 50 ms: all settle, the pool still works', async () => {
    await chaos(10_000, 50);
  }, 600_000);
});
