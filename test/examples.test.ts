// Every program in examples/ runs and exits 0: each checks its own scenario's
// stated outcome and exits non-zero when it does not hold.
import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const examples = path.join(__dirname, '..', 'examples');

async function runExample(file: string): Promise<string> {
  const { stdout } = await run(process.execPath, [path.join(examples, file)], { timeout: 45_000 });
  return stdout;
}

describe('examples', () => {
  // Two lanes: the long join-order scenario (about 9 s) beside all the others,
  // each lane one program at a time so the timing checks inside them hold.
  it('all scenario examples and the demo exit 0 and print OK', async () => {
    // The POSIX semaphore example rides with the join-order one: that lane has room.
    const long = ['scenario-03-join-order.mjs', 'posix-semaphore.mjs'];
    const rest = [
      'scenario-01-one-process.mjs',
      'scenario-02-parallel.mjs',
      'scenario-04-subclass.mjs',
      'scenario-05-isolation.mjs',
      'scenario-06-terminate.mjs',
      'scenario-07-daemon.mjs',
      'scenario-20-pool-queue.mjs',
      'scenario-21-manager.mjs',
      'demo.mjs',
    ];
    const outputs = new Map<string, string>();
    const lane = async (files: string[]) => {
      for (const f of files) outputs.set(f, await runExample(f));
    };
    await Promise.all([lane(long), lane(rest)]);
    for (const f of [...long, ...rest.filter((f) => f !== 'demo.mjs')]) {
      expect(outputs.get(f), f).toMatch(/^OK$/m);
    }
    expect(outputs.get('scenario-01-one-process.mjs')).toContain('hello, world');
    expect(outputs.get('demo.mjs')).toMatch(/searchers exited with 0, 0, 0, 0/);
  }, 90_000);
});
