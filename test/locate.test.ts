// Targets by reference: exported functions of ES and CommonJS modules, default
// exports, { module, export } targets (path, file: URL string, URL), run()
// overrides, targets of modules that a loader handed to Node under a data: URL
// (tsx), and the errors for targets a child could never import.
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

import { Process, activeChildren } from 'posix-multiprocessing';
import * as targets from './fixtures/targets.mjs';

const cjs = createRequire(__filename)('./fixtures/targets.cjs');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-locate-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const out = (name: string) => path.join(tmp, name);
const fixture = path.join(__dirname, 'fixtures', 'targets.mjs');
const program = (name: string) => path.join(__dirname, 'fixtures', 'programs', name);
const root = path.join(__dirname, '..');
const exec = promisify(execFile);

async function runTo(options: ConstructorParameters<typeof Process>[0], file: string): Promise<string> {
  const p = new Process(options);
  p.start();
  expect(await p.join(20)).toBe(0);
  return fs.readFileSync(file, 'utf8');
}

describe('function targets', () => {
  it('an exported function of an ES module', async () => {
    const file = out('esm');
    expect(await runTo({ target: targets.writeText, args: [file, 'esm'] }, file)).toBe('esm');
  });

  it('an exported async function: the child waits for its promise', async () => {
    const file = out('async');
    expect(await runTo({ target: targets.writeAfterAwait, args: [file, 'x'] }, file)).toBe('async:x');
  });

  it('the default export of an ES module', async () => {
    const file = out('default');
    expect(await runTo({ target: targets.default, args: [file] }, file)).toBe('default export ran');
  });

  it('an exported function of a CommonJS module, also under another export name', async () => {
    const a = out('cjs-a');
    const b = out('cjs-b');
    expect(await runTo({ target: cjs.writeCjs, args: [a, 'a'] }, a)).toBe('cjs:a');
    expect(await runTo({ target: cjs.aliased, args: [b, 'b'] }, b)).toBe('cjs:b');
  });

  it('an exported subclass overriding run()', async () => {
    const p = new targets.Sleeper();
    (p as any).seconds = 0.1;
    p.start();
    expect(await p.join(20)).toBe(0);
  });
});

describe('targets of modules that tsx and other loaders deliver', () => {
  it('tsx: a .ts module of a CommonJS package imported from an .mts entry (a data: URL) is found by its file', async () => {
    const file = out('tsx-cjs.json');
    const { stdout } = await exec(process.execPath, ['--import', 'tsx', program('ts-cjs-main.mts'), file], {
      cwd: root,
      timeout: 40_000,
    });
    const result = JSON.parse(stdout);
    expect(result.deliveredAs).toEqual(['data:']); // the case under test, not a file: module
    expect(result.exitCode).toBe(0);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ text: 'from the child', execArgv: ['--import', 'tsx'] });
    // A function of that module that is not exported still fails at start().
    expect(result.hiddenError).toEqual({
      code: 'ERR_MP_TARGET_NOT_IMPORTABLE',
      message: expect.stringMatching(/inner cannot be sent.*ts-cjs-tasks\.ts does not export it.*export it, or pass \{ module, export \}/),
    });
  }, 60_000);

  it('tsx: a .cts entry (evaluated by the ESM loader, whose require() has no cache) exporting its own target', async () => {
    const file = out('tsx-cts.json');
    const { stdout } = await exec(process.execPath, ['--import', 'tsx', program('ts-cts-parent.cts'), file], {
      cwd: root,
      timeout: 40_000,
    });
    expect(JSON.parse(stdout)).toEqual({ exitCode: 0 });
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ isMain: false });
  }, 60_000);

  it('any loader: an ES module delivered as a data: URL with a source map is found by its file', async () => {
    const file = out('delivered');
    const register = program('delivered-register.mjs');
    const { stdout } = await exec(process.execPath, ['--import', register, program('delivered-main.mjs'), file], {
      cwd: root,
      timeout: 30_000,
    });
    expect(JSON.parse(stdout)).toEqual({ deliveredAs: 'data:', exitCode: 0 });
    expect(fs.readFileSync(file, 'utf8')).toBe('delivered');
  }, 40_000);

  it('a loader registered in code, which children do not inherit, fails at start() saying so', async () => {
    const { stdout } = await exec(process.execPath, [program('delivered-main.mjs'), out('unused')], { cwd: root, timeout: 30_000 });
    expect(JSON.parse(stdout)).toEqual({
      deliveredAs: 'data:',
      error: {
        code: 'ERR_MP_TARGET_NOT_IMPORTABLE',
        message: expect.stringMatching(/targets\.delivered\.mjs was loaded through data: by a loader that child processes will not have.*--import/),
      },
    });
  }, 40_000);
});

describe('{ module, export } targets', () => {
  it('module as an absolute path, a relative path, a file: URL string and a URL', async () => {
    const relative = path.relative(process.cwd(), fixture);
    const forms: [string, string | URL][] = [
      ['abs', fixture],
      ['rel', relative.startsWith('.') ? relative : `./${relative}`],
      ['urlstring', pathToFileURL(fixture).href],
      ['url', pathToFileURL(fixture)],
    ];
    const ps = forms.map(([label, module]) => {
      const p = new Process({ target: { module, export: 'writeText' }, args: [out(`mod-${label}`), label] });
      p.start();
      return p;
    });
    expect(await Promise.all(ps.map((p) => p.join(20)))).toEqual([0, 0, 0, 0]);
    for (const [label] of forms) expect(fs.readFileSync(out(`mod-${label}`), 'utf8')).toBe(label);
  });

  it('a CommonJS module and its export', async () => {
    const file = out('mod-cjs');
    const module = path.join(__dirname, 'fixtures', 'targets.cjs');
    expect(await runTo({ target: { module, export: 'writeCjs' }, args: [file, 'm'] }, file)).toBe('cjs:m');
  });

  it('an export that the module does not have fails in the child with exit code 1', async () => {
    const p = new Process({ target: { module: fixture, export: 'noSuchExport' } });
    p.start();
    expect(await p.join(20)).toBe(1);
  });

  it('bad { module, export } values are TypeErrors; a missing file is ENOENT at start()', () => {
    expect(() => new Process({ target: { module: 42, export: 'x' } as any }).start()).toThrow(
      expect.objectContaining({ name: 'TypeError', message: expect.stringMatching(/options\.target\.module/) }),
    );
    expect(() => new Process({ target: { module: '', export: 'x' } }).start()).toThrow(TypeError);
    expect(() => new Process({ target: { module: fixture, export: '' } }).start()).toThrow(
      expect.objectContaining({ name: 'TypeError', message: expect.stringMatching(/options\.target\.export/) }),
    );
    expect(() => new Process({ target: { module: fixture } as any }).start()).toThrow(TypeError);
    expect(() => new Process({ target: { module: out('missing.mjs'), export: 'f' } }).start()).toThrow(
      expect.objectContaining({ code: 'ENOENT' }),
    );
    expect(activeChildren()).toEqual([]);
  });
});

describe('targets a child cannot import', () => {
  const notImportable = (re: RegExp) =>
    expect.objectContaining({ code: 'ERR_MP_TARGET_NOT_IMPORTABLE', message: expect.stringMatching(re) });

  it('a closure fails at start() with a message saying how to fix it', () => {
    const p = new Process({ target: targets.closureTarget() });
    expect(() => p.start()).toThrow(notImportable(/export it, or pass \{ module, export \}/));
    expect(p.pid).toBeUndefined();
    expect(() => new Process({ target: () => 1 }).start()).toThrow(notImportable(/cannot be loaded by Node here/));
  });

  it('an unexported function of an ES or CommonJS module fails at start()', () => {
    expect(() => new Process({ target: targets.hiddenTarget() }).start()).toThrow(notImportable(/hidden.*does not export it/s));
    expect(() => new Process({ target: cjs.notExportedRef() }).start()).toThrow(notImportable(/notExported/));
  });

  it('a function defined in this test file (transformed by vitest) fails at start()', () => {
    function local() {}
    expect(() => new Process({ target: local }).start()).toThrow(notImportable(/local/));
  });

  it('bound and built-in functions fail at start()', () => {
    expect(() => new Process({ target: targets.noop.bind(null) }).start()).toThrow(notImportable(/bound/));
    expect(() => new Process({ target: Math.max }).start()).toThrow(notImportable(/max/));
  });

  it('a subclass that is not exported fails at start()', () => {
    class Unexported extends Process {
      run() {}
    }
    expect(() => new Unexported().start()).toThrow(notImportable(/Unexported/));
  });
});
