// The argument codec: encode/decode directly (structured-clone semantics,
// Errors, registered transferables), then end to end through a child's args.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { Process, registerTransferable } from 'posix-multiprocessing';
// The codec is internal: tested through the package's own build.
import { decode, encode, isPlainJson } from '../dist/cjs/serialize.js';
import * as targets from './fixtures/targets.mjs';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmp-serialize-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const out = (name: string) => path.join(tmp, name);
const roundTrip = <T>(value: T): T => decode(encode(value)) as T;

class CustomError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CustomError';
  }
}

describe('encode/decode', () => {
  it('plain JSON data takes the JSON path and round-trips', () => {
    const value = { a: 1, b: 'two', c: [true, null, { d: 1.5 }], e: {} };
    const bytes = encode(value);
    expect(isPlainJson(bytes)).toBe(true);
    expect(roundTrip(value)).toEqual(value);
  });

  it('values JSON would change take the general path', () => {
    for (const value of [undefined, -0, NaN, Infinity, [1, , 3], { u: undefined }, 10n, new Date(0)]) {
      expect(isPlainJson(encode(value))).toBe(false);
    }
    expect(roundTrip(undefined)).toBeUndefined();
    expect(Object.is(roundTrip(-0), -0)).toBe(true);
    expect(roundTrip(NaN)).toBeNaN();
    expect(roundTrip(Infinity)).toBe(Infinity);
    const sparse = roundTrip([1, , 3]);
    expect(sparse.length).toBe(3);
    expect(1 in sparse).toBe(false);
    expect(roundTrip({ u: undefined })).toHaveProperty('u', undefined);
  });

  it('Map, Set, Date, RegExp, BigInt and typed arrays keep their types', () => {
    const value = {
      map: new Map<unknown, unknown>([['k', 1], [2, { v: [3n] }]]),
      set: new Set(['a', 1, 2n]),
      date: new Date('2024-01-02T03:04:05.678Z'),
      re: /a+b/gi,
      big: 2n ** 70n,
      u8: new Uint8Array([1, 2, 255]),
      f64: new Float64Array([0.5, -1]),
      i64: new BigInt64Array([-5n]),
      ab: new Uint16Array([7, 8]).buffer,
    };
    const back = roundTrip(value);
    expect(back.map).toBeInstanceOf(Map);
    expect(back.map.get('k')).toBe(1);
    expect(back.map.get(2)).toEqual({ v: [3n] });
    expect(back.set).toEqual(new Set(['a', 1, 2n]));
    expect(back.date).toBeInstanceOf(Date);
    expect(back.date.getTime()).toBe(value.date.getTime());
    expect(back.re).toBeInstanceOf(RegExp);
    expect(back.re.source).toBe('a+b');
    expect(back.re.flags).toBe('gi');
    expect(back.big).toBe(2n ** 70n);
    expect(back.u8).toBeInstanceOf(Uint8Array);
    expect([...back.u8]).toEqual([1, 2, 255]);
    expect(back.f64).toBeInstanceOf(Float64Array);
    expect([...back.f64]).toEqual([0.5, -1]);
    expect(back.i64).toBeInstanceOf(BigInt64Array);
    expect([...back.i64]).toEqual([-5n]);
    expect(back.ab).toBeInstanceOf(ArrayBuffer);
    expect([...new Uint16Array(back.ab)]).toEqual([7, 8]);
  });

  it('cycles and shared references survive', () => {
    const shared = { s: 1 };
    const graph: any = { a: shared, b: shared, list: [shared] };
    graph.self = graph;
    graph.map = new Map([['me', graph]]);
    const back = roundTrip(graph);
    expect(back.self).toBe(back);
    expect(back.a).toBe(back.b);
    expect(back.list[0]).toBe(back.a);
    expect(back.map.get('me')).toBe(back);
  });

  it('Errors keep name, message, stack, cause and own properties such as code', () => {
    const inner = Object.assign(new RangeError('inner'), { code: 'E_INNER' });
    const err = Object.assign(new CustomError('outer', { cause: inner }), { code: 'E_OUTER', extra: { n: 1 } });
    const back = roundTrip(err) as any;
    expect(back).toBeInstanceOf(Error);
    expect(back.name).toBe('CustomError');
    expect(back.message).toBe('outer');
    expect(back.code).toBe('E_OUTER');
    expect(back.extra).toEqual({ n: 1 });
    expect(back.stack).toBe(err.stack);
    expect(back.cause).toBeInstanceOf(RangeError);
    expect(back.cause.message).toBe('inner');
    expect(back.cause.code).toBe('E_INNER');
    const sys = Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT', errno: -2, syscall: 'open', path: '/x' });
    expect(roundTrip(sys)).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'open', path: '/x' });
  });

  it("an own '__proto__' key stays a data property on the general path (objects and errors)", () => {
    const obj = JSON.parse('{"__proto__": {"x": 1}, "n": -0}');
    const back = decode(encode(obj)) as Record<string, unknown>;
    expect(Object.getPrototypeOf(back)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(back, '__proto__')?.value).toEqual({ x: 1 });
    expect(Object.is(back.n, -0)).toBe(true);
    const err = Object.defineProperty(new Error('e'), '__proto__', { value: 7, enumerable: true, writable: true, configurable: true });
    const errBack = decode(encode(err)) as Error;
    expect(errBack).toBeInstanceOf(Error);
    expect(Object.getOwnPropertyDescriptor(errBack, '__proto__')?.value).toBe(7);
  });

  it('functions and symbols are refused with ERR_MP_DATA_CLONE', () => {
    expect(() => encode({ f() {} })).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_MP_DATA_CLONE' }));
    expect(() => encode([Symbol('x')])).toThrow(expect.objectContaining({ code: 'ERR_MP_DATA_CLONE' }));
  });

  it('garbage input to decode is an error, never a crash', () => {
    expect(() => decode(new Uint8Array())).toThrow(expect.objectContaining({ code: 'ERR_MP_DATA_CLONE' }));
    expect(() => decode(Buffer.from([0x00, 1, 2]))).toThrow(expect.objectContaining({ code: 'ERR_MP_DATA_CLONE' }));
    expect(() => decode(Buffer.from('J{not json'))).toThrow(SyntaxError);
    expect(() => decode(Buffer.from([0x56, 0xff, 0x0f, 0x99]))).toThrow();
  });

  it('a registered class travels as its encoded form and is revived', () => {
    class Point {
      constructor(
        public x: number,
        public y: number,
      ) {}
      norm() {
        return Math.hypot(this.x, this.y);
      }
    }
    registerTransferable('test.Point', Point, {
      encode: (p) => [p.x, p.y],
      decode: ([x, y]: [number, number]) => new Point(x, y),
    });
    const p = new Point(3, 4);
    const back = roundTrip({ p, again: p, list: [new Point(1, 0)] }) as any;
    expect(back.p).toBeInstanceOf(Point);
    expect(back.p.norm()).toBe(5);
    expect(back.again).toBe(back.p);
    expect(back.list[0].norm()).toBe(1);
  });
});

describe('arguments through a child', () => {
  it('the child receives Map, Set, Date, RegExp, BigInt, typed arrays and Errors as themselves', async () => {
    const file = out('echo.json');
    const cause = new Error('root cause');
    const err = Object.assign(new CustomError('failed', { cause }), { code: 'E_CODE' });
    const args = [new Map([['a', 1]]), new Set([1, 2]), new Date(86_400_000), /x\d/m, 123n, new Int32Array([-1, 2]), err, undefined];
    const p = new Process({ target: targets.echoArgs, args: [file, ...args] });
    p.start();
    expect(await p.join(20)).toBe(0);
    const seen = JSON.parse(fs.readFileSync(file, 'utf8')).args;
    expect(seen).toEqual([
      { Map: [['a', 1]] },
      { Set: [1, 2] },
      { Date: 86_400_000 },
      { RegExp: '/x\\d/m' },
      { BigInt: '123' },
      { Int32Array: ['-1', '2'] },
      { Error: { name: 'CustomError', message: 'failed', code: 'E_CODE', hasStack: true, cause: { Error: { name: 'Error', message: 'root cause', hasStack: true } } } },
      { undefined: true },
    ]);
  });

  it('cycles and shared references arrive intact in the child', async () => {
    const file = out('graph.json');
    const shared = { n: 1 };
    const graph: any = { a: shared, b: shared };
    graph.self = graph;
    graph.map = new Map();
    graph.map.set('me', graph.map);
    const p = new Process({ target: targets.checkGraph, args: [file, graph] });
    p.start();
    expect(await p.join(20)).toBe(0);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({ cycle: true, shared: true, mapCycle: true });
  });

  it('what the child re-encodes decodes here to equal values', async () => {
    const file = out('reencoded.bin');
    const args = [{ deep: { list: [1, 'x', null] } }, new Map([[1n, new Set(['s'])]]), new Uint8Array([9, 8, 7])];
    const p = new Process({ target: targets.reencodeArgs, args: [file, ...args] });
    p.start();
    expect(await p.join(20)).toBe(0);
    expect(decode(fs.readFileSync(file))).toEqual(args);
  });

  it('large arguments (beyond a pipe buffer) arrive whole', async () => {
    const file = out('big.bin');
    const big = new Uint8Array(3 * 1024 * 1024).map((_, i) => i % 251);
    const text = 'y'.repeat(200_000);
    const p = new Process({ target: targets.reencodeArgs, args: [file, big, text] });
    p.start();
    expect(await p.join(30)).toBe(0);
    const [b, t] = decode(fs.readFileSync(file)) as [Uint8Array, string];
    expect(b.length).toBe(big.length);
    expect(Buffer.compare(Buffer.from(b), Buffer.from(big))).toBe(0);
    expect(t).toBe(text);
  });
});
