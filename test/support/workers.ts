// A program (for `node -e`) that starts worker threads running `workerSource`,
// waits until each posts 'waiting' (its async waits are then pending), and
// terminates it; four times, then prints "done". Used to check that
// terminating a worker with waits parked on addon threads neither crashes the
// process nor leaves anything behind.

/** stayAlive: after "done", keep the process (and the terminated workers'
 *  addon threads) alive until a line arrives on stdin, then exit 0. */
export function terminateWorkersProgram(workerSource: string, { stayAlive = false } = {}): string {
  return `
    const { Worker } = require('node:worker_threads');
    (async () => {
      for (let i = 0; i < 4; i++) {
        const w = new Worker(${JSON.stringify(workerSource)}, { eval: true });
        await new Promise((r) => w.once('message', r));
        await w.terminate();
      }
      console.log('done');
      ${stayAlive ? "process.stdin.once('data', () => process.exit(0));" : ''}
    })();
  `;
}
