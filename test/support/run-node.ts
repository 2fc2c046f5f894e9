// Runs a Node program to its end and collects what it printed: the tests that
// check a whole program's behaviour (exit codes, output, what it leaves behind).
import { type ChildProcess, spawn } from 'node:child_process';
import { afterAll } from 'vitest';

// A program still running when its test file ends (a test that timed out on
// it, say) would outlive the run: it is killed once the file's tests are done
// (vitest may end a worker without its 'exit' event, so not only then).
const running = new Set<ChildProcess>();
const killLeftovers = () => {
  for (const child of running) child.kill('SIGKILL');
};
afterAll(killLeftovers);
process.on('exit', killLeftovers);
function track(child: ChildProcess): void {
  running.add(child);
  child.on('exit', () => running.delete(child));
}

export interface NodeRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runNode(script: string, args: string[] = [], nodeFlags: string[] = []): Promise<NodeRun> {
  return startNode(script, args, nodeFlags).ended.then(({ code, stdout, stderr }) => ({ code, stdout, stderr }));
}

export interface LiveNode {
  pid: number;
  /** Resolves with the first line of stdout that parses as JSON and passes `accept`. */
  line<T = any>(accept: (value: T) => boolean, ms: number): Promise<T>;
  /** What the program printed so far. */
  output(): NodeRun;
  /** Resolves when the program has ended: its code (null if a signal ended it), signal and output. */
  ended: Promise<NodeRun & { signal: NodeJS.Signals | null }>;
  kill(signal: NodeJS.Signals): void;
}

/** Starts a Node program and lets the test read its JSON lines while it runs (to kill it midway, say). */
export function startNode(script: string, args: string[] = [], nodeFlags: string[] = []): LiveNode {
  const child = spawn(process.execPath, [...nodeFlags, script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  track(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const ended = new Promise<NodeRun & { signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  const parsed = (): unknown[] =>
    stdout
      .split('\n')
      .slice(0, -1)
      .flatMap((l) => {
        try {
          return [JSON.parse(l)];
        } catch {
          return [];
        }
      });
  return {
    pid: child.pid!,
    ended,
    output: () => ({ code: child.exitCode, stdout, stderr }),
    kill: (signal) => child.kill(signal),
    async line(accept, ms) {
      const deadline = Date.now() + ms;
      let done = false;
      void ended.then(() => (done = true));
      for (;;) {
        const found = parsed().find((v) => accept(v as never));
        if (found !== undefined) return found as never;
        if (done || Date.now() > deadline) {
          throw new Error(`no such line from ${script} ${done ? '(it ended)' : `within ${ms} ms`}:\nstdout: ${stdout}\nstderr: ${stderr}`);
        }
        await new Promise((r) => setTimeout(r, 10));
      }
    },
  };
}
