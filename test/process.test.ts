import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { Process, isMainProcess } from 'posix-multiprocessing';
import * as targets from './fixtures/targets.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-process-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const out = (name: string) => path.join(tmp, name);
const readJson = (file: string) => JSON.parse(fs.readFileSync(file, 'utf8'));

describe('Process basics', () => {
  it('runs an exported target in a child and reports exit code 0', async () => {
    const file = out('report.json');
    const p = new Process({ target: targets.report, args: [file, { hello: 'world' }] });
    expect(p.pid).toBeUndefined();
    expect(p.exitCode).toBeNull();
    p.start();
    expect(typeof p.pid).toBe('number');
    expect(await p.join()).toBe(0);
    expect(p.exitCode).toBe(0);
    expect(p.isAlive()).toBe(false);
    const seen = readJson(file);
    expect(seen.pid).toBe(p.pid);
    expect(seen.ppid).toBe(process.pid);
    expect(seen.current.name).toBe(p.name);
    expect(seen.parent.pid).toBe(process.pid);
    expect(seen.extra).toEqual({ hello: 'world' });
    expect(seen.stdinIsDevNull).toBe(true);
    // Only stdio, fds Node itself opens, and nothing inherited from us.
    expect(isMainProcess()).toBe(true);
  });
});
