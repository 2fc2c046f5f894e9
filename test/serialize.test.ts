// The argument codec: encode/decode directly (structured-clone semantics,
// Errors, registered transferables), then end to end through a child's args.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { types } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

import { Pipe, Process, Queue, WorkerCrashedError, registerTransferable } from 'posix-multiprocessing';
// The codec is internal: tested through the package's own build.
import { decode, encode, encodeJsonText, isPlainJson } from '../dist/cjs/serialize.js';
import * as codecTargets from './fixtures/codec.mjs';
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

class NotFoundError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = 'NotFoundError';
  }
}

/** Own enumerable keys besides the indices: what JSON drops and structured clone keeps. */
const extraKeysOf = (a: unknown[]) => Object.keys(a).filter((k) => String(Number(k)) !== k);

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

describe('Errors arrive as real Errors (issue #12 item 12)', () => {
  it('each revives as a native Error of its nearest built-in class, keeping name, message, stack, cause and own properties', () => {
    const cases: Array<[Error, ErrorConstructor]> = [
      [new Error('e'), Error],
      [new TypeError('t'), TypeError],
      [new RangeError('r'), RangeError],
      [new SyntaxError('s'), SyntaxError],
      [new ReferenceError('f'), ReferenceError],
      [new EvalError('v'), EvalError],
      [new URIError('u'), URIError],
      [new CustomError('c', { cause: new TypeError('why') }), Error],
      [new NotFoundError('nf'), RangeError],
      [new WorkerCrashedError('w', 3, null), WorkerCrashedError as unknown as ErrorConstructor], // the package's own classes travel as themselves
      [Object.assign(new Error('sys'), { code: 'ENOENT', errno: -2, syscall: 'open' }), Error],
    ];
    for (const [err, Base] of cases) {
      const back = roundTrip(err);
      expect(types.isNativeError(back), err.name).toBe(true);
      expect(Object.getPrototypeOf(back)).toBe(Base.prototype);
      expect(back.name).toBe(err.name);
      expect(back.message).toBe(err.message);
      expect(back.stack).toBe(err.stack);
      expect(Object.keys(back).sort()).toEqual(Object.keys(err).sort());
      for (const key of Object.keys(err)) expect((back as any)[key]).toEqual((err as any)[key]);
      // A real Error survives structuredClone (and v8.serialize) in the receiver.
      const clone = structuredClone(back);
      expect(types.isNativeError(clone)).toBe(true);
      expect(clone.message).toBe(err.message);
    }
    const custom = roundTrip(new CustomError('c', { cause: new TypeError('why') }));
    expect(types.isNativeError(custom.cause)).toBe(true);
    expect(custom.cause).toBeInstanceOf(TypeError);
    expect(Object.getOwnPropertyDescriptor(custom, 'cause')?.enumerable).toBe(false);
    const crashed = roundTrip(new WorkerCrashedError('w', 3, null)) as any;
    expect([crashed.name, crashed.code, crashed.exitCode, crashed.signal]).toEqual(['WorkerCrashedError', 'ERR_MP_WORKER_CRASHED', 3, null]);
  });

  it('AggregateError keeps its class and its errors; cycles through an error survive', () => {
    const agg = new AggregateError([new RangeError('r1'), new CustomError('c2')], 'many');
    const back = roundTrip(agg);
    expect(types.isNativeError(back)).toBe(true);
    expect(back).toBeInstanceOf(AggregateError);
    expect(back.errors.map((e: Error) => [types.isNativeError(e), e.name, e.message])).toEqual([
      [true, 'RangeError', 'r1'],
      [true, 'CustomError', 'c2'],
    ]);
    expect(Object.keys(back)).toEqual([]); // errors stays non-enumerable, as on a native one
    const loop = Object.assign(new Error('loop'), { self: null as unknown });
    loop.self = loop;
    const loopBack = roundTrip({ a: loop, b: loop });
    expect(loopBack.a).toBe(loopBack.b);
    expect((loopBack.a as any).self).toBe(loopBack.a);
  });

  it('an Error whose parts cannot all travel goes without them, and says which and why (issue #12 item 4)', () => {
    // x fails half-way (its function comes after a); y holds x again: the
    // half-built copy of x must not be reused for y, which fails the same way.
    const half = { a: 1, f() {} };
    const err = Object.assign(new RangeError('boom'), { code: 'E_BOOM', retry: () => {}, x: half, y: { again: half }, ok: { n: 1 } });
    Object.defineProperty(err, 'bad', { enumerable: true, get: () => { throw new Error('getter broke'); } });
    (err as any).cause = Symbol('why');
    const back = roundTrip(err) as any;
    expect(types.isNativeError(back)).toBe(true);
    expect(back).toBeInstanceOf(RangeError);
    expect([back.message, back.code, back.stack]).toEqual(['boom', 'E_BOOM', err.stack]);
    expect(back.ok).toEqual({ n: 1 });
    for (const key of ['retry', 'x', 'y', 'bad', 'cause']) expect(key in back, key).toBe(false);
    expect(Object.keys(back.droppedProperties).sort()).toEqual(['bad', 'cause', 'retry', 'x', 'y']);
    expect(back.droppedProperties.retry).toMatch(/function/);
    expect(back.droppedProperties.bad).toBe('reading or encoding it threw Error: getter broke');
    expect(back.droppedProperties.cause).toMatch(/Symbol\(why\)/);
    // The fds a dropped part listed for the channel are taken back.
    class FdHolder {}
    registerTransferable('test.FdHolder', FdHolder, {
      encode: (_h, ctx) => ctx.fds.push(0) - 1,
      decode: () => new FdHolder(),
    });
    const ctx = { fds: [] as number[] };
    const withFd = Object.assign(new Error('fd'), { part: { h: new FdHolder(), f() {} } });
    const fdBack = decode(encode(withFd, ctx), ctx) as any;
    expect(ctx.fds).toEqual([]);
    expect(Object.keys(fdBack.droppedProperties)).toEqual(['part']);
    // A thrown value that is not an Error is still refused whole.
    expect(() => encode({ e: Symbol('s') })).toThrow(expect.objectContaining({ code: 'ERR_MP_DATA_CLONE' }));
  });
});

describe('arrays keep extra own properties, like structured clone (issue #12 item 12)', () => {
  it('on the JSON path they are noticed and sent by the general path', () => {
    const a = Object.assign([1, 2], { extra: 'x' });
    expect(encodeJsonText(a)).toBeUndefined();
    expect(encodeJsonText({ list: a })).toBeUndefined();
    expect(isPlainJson(encode(a))).toBe(false);
    const back = roundTrip({ list: a }).list;
    expect(Array.isArray(back)).toBe(true);
    expect([...back]).toEqual([1, 2]);
    expect(extraKeysOf(back)).toEqual(['extra']);
    expect(back.extra).toBe('x');
    expect(encodeJsonText([1, 2])).toBe('[1,2]'); // a plain array still takes the JSON path
    // A RegExp match: index, input and groups.
    const m = 'xaby'.match(/(?<l>a)b/)!;
    const mb = roundTrip(m) as RegExpMatchArray;
    expect([...mb]).toEqual(['ab', 'a']);
    expect([mb.index, mb.input, { ...mb.groups }]).toEqual([1, 'xaby', { l: 'a' }]);
  });

  it('on the general path, with holes, cycles, and values that need the codec', () => {
    const g: any = Object.assign([new Map([[1, 2]]), , 3], { err: new TypeError('in array'), '01': 'not an index', '4294967295': 'neither' });
    g.self = g;
    const back = roundTrip({ g, again: g }) as any;
    expect(back.again).toBe(back.g);
    const b = back.g;
    expect(b.length).toBe(3);
    expect(1 in b).toBe(false);
    expect(b[0]).toEqual(new Map([[1, 2]]));
    expect(b.self).toBe(b);
    expect(types.isNativeError(b.err)).toBe(true);
    expect(b.err).toBeInstanceOf(TypeError);
    expect(extraKeysOf(b).sort()).toEqual(extraKeysOf(g).sort());
    expect([b['01'], b['4294967295']]).toEqual(['not an index', 'neither']);
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

describe('Errors and arrays end to end (issue #12 item 12)', () => {
  const errorCase = () => Object.assign(new NotFoundError('not here'), { code: 'E_NF', detail: { n: 1 } });
  const checkError = (d: any) => {
    expect(d).toMatchObject({ error: true, isNativeError: true, ctor: 'RangeError', name: 'NotFoundError', message: 'not here', code: 'E_NF', detail: { n: 1 } });
    expect(d.stack).toContain('not here');
    expect(d.cloneIsNativeError).toBe(true);
    expect(d.cloneMessage).toBe('not here');
  };
  const withCause = () => new CustomError('outer', { cause: new TypeError('inner') });
  const checkWithCause = (d: any) => {
    expect(d).toMatchObject({ isNativeError: true, ctor: 'Error', name: 'CustomError', message: 'outer', cloneIsNativeError: true });
    expect(d.cause).toMatchObject({ isNativeError: true, ctor: 'TypeError', name: 'TypeError', message: 'inner' });
  };
  const small = () => Object.assign([1, 2], { extra: 'x' }); // small enough for the queue's and pipe's fast paths
  const checkSmall = (d: any) => expect(d).toEqual({ array: [1, 2], props: { extra: 'x' } });

  it('through Process args: the child sees real Errors and arrays with their extra properties', async () => {
    const file = out('described.json');
    const p = new Process({ target: codecTargets.describeArgs, args: [file, errorCase(), withCause(), small()] });
    p.start();
    expect(await p.join(20)).toBe(0);
    const [e, c, a] = JSON.parse(fs.readFileSync(file, 'utf8'));
    checkError(e);
    checkWithCause(c);
    checkSmall(a);
  }, 30_000);

  it('over a Queue and a Pipe, both ways', async () => {
    const values = () => [errorCase(), withCause(), small(), Object.assign(['a'], { inner: errorCase() })];
    const check = (got: any[]) => {
      const [[de, e], [dc, c], [ds, s], [dn, n]] = got;
      checkError(de);
      checkWithCause(dc);
      checkSmall(ds);
      expect(dn.array).toEqual(['a']);
      checkError(dn.props.inner);
      // and what came back here
      for (const err of [e, c, n.inner]) expect(types.isNativeError(err)).toBe(true);
      expect(e).toBeInstanceOf(RangeError);
      expect([e.name, e.code, c.name, c.cause.message]).toEqual(['NotFoundError', 'E_NF', 'CustomError', 'inner']);
      expect(extraKeysOf(s)).toEqual(['extra']);
      expect([...s, s.extra]).toEqual([1, 2, 'x']);
    };

    const inbox = new Queue();
    const outbox = new Queue();
    const q = new Process({ target: codecTargets.echoQueue, args: [inbox, outbox] });
    q.start();
    const [mine, theirs] = Pipe();
    const c = new Process({ target: codecTargets.echoConnection, args: [theirs] });
    c.start();
    theirs.close();
    try {
      const fromQueue: unknown[] = [];
      for (const v of values()) {
        await inbox.put(v);
        fromQueue.push(await outbox.get({ timeout: 20 }));
      }
      check(fromQueue);
      const fromPipe: unknown[] = [];
      for (const v of values()) {
        mine.send(v);
        fromPipe.push(await mine.recv());
      }
      check(fromPipe);
      await inbox.put(null);
      mine.send(null);
      expect(await q.join(20)).toBe(0);
      expect(await c.join(20)).toBe(0);
    } finally {
      q.terminate();
      c.terminate();
      await q.join(5);
      await c.join(5);
      mine.close();
      inbox.close();
      outbox.close();
    }
  }, 40_000);
});
