// The queues' fast JSON decoder (src/fast-json.ts) against JSON.parse, the
// reference: for every text it accepts it must give exactly what JSON.parse
// gives (same values, -0, key order, own data properties, Object.prototype);
// everything else it must decline.
import { isDeepStrictEqual } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';

import { Pipe, Queue } from 'posix-multiprocessing';
// Internal: tested through the package's own build.
import { decodeFast, encodeFast, ENCODE_LIMIT, ENCODE_SLACK, NOT_FAST } from '../dist/cjs/fast-json.js';
import { encodeJsonText } from '../dist/cjs/serialize.js';

// The bytes as the ring holds them: tag byte, then the text (ASCII only: the
// ring offers the fast decoder only records flagged all-ASCII).
function fast(text: string): unknown {
  const buf = Buffer.from('J' + text, 'latin1');
  return decodeFast(buf, 1, buf.length);
}

// Same structure, same prototypes, same own property names in the same order,
// all of them enumerable writable configurable data properties.
function sameShape(a: unknown, b: unknown, path = '$'): void {
  if (typeof a !== 'object' || a === null) {
    expect(Object.is(a, b), `${path}: ${String(a)} vs ${String(b)}`).toBe(true);
    return;
  }
  expect(typeof b).toBe('object');
  expect(Object.getPrototypeOf(a), path).toBe(Object.getPrototypeOf(b));
  expect(Reflect.ownKeys(a), path).toEqual(Reflect.ownKeys(b as object));
  for (const key of Reflect.ownKeys(a)) {
    const da = Object.getOwnPropertyDescriptor(a, key)!;
    const db = Object.getOwnPropertyDescriptor(b, key)!;
    expect({ ...da, value: undefined }, `${path}.${String(key)}`).toEqual({ ...db, value: undefined });
    sameShape(da.value, db.value, `${path}.${String(key)}`);
  }
}

function check(text: string): boolean {
  const ref = JSON.parse(text);
  const got = fast(text);
  if (got === NOT_FAST) return false;
  expect(isDeepStrictEqual(got, ref), text).toBe(true);
  sameShape(got, ref);
  return true;
}

// A small deterministic PRNG, so a failure reproduces.
function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const KEYS = ['i', 's', 'a', 'id', 'name', '0', '1', '10', '4294967295', '-1', '01', '1.5', '__proto__', 'constructor',
  'toString', 'hasOwnProperty', 'valueOf', '', ' ', 'k"q', 'b\\s', 'nl\n', 'é', '\u{1f600}', 'x'.repeat(30)];
const STRINGS = ['', 'hello', 'a"b', 'back\\slash', 'tab\t', '\u0000', '\u007f', 'é', '\u2028', '\ud800', 'x'.repeat(40), '/', '~'];
const NUMBERS = [0, -0, 1, -1, 7, 12345, 2 ** 31, -(2 ** 31), 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 2, 1e15 - 1, 1e15, 1e16, 1e21, 1e-7,
  0.1, 1.5, -2.5, 123456789012345, 999999999999999, 1234567890123456, Number.MAX_VALUE, Number.MIN_VALUE, 5e-324];

function gen(r: () => number, depth: number, keys = KEYS): unknown {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const x = r();
  if (depth < 3 && x < 0.3) {
    const o: Record<string, unknown> = {};
    const n = Math.floor(r() * 5);
    for (let k = 0; k < n; k++) {
      const key = r() < 0.7 ? pick(KEYS.slice(0, 5)) + (r() < 0.3 ? k : '') : pick(keys);
      Object.defineProperty(o, key, { value: gen(r, depth + 1, keys), enumerable: true, writable: true, configurable: true });
    }
    return o;
  }
  if (depth < 3 && x < 0.38) return Array.from({ length: Math.floor(r() * 4) }, () => gen(r, depth + 1, keys));
  if (x < 0.6) return pick(NUMBERS) * (r() < 0.5 ? 1 : -1);
  if (x < 0.7) return Math.floor(r() * 2000) - 1000;
  if (x < 0.85) return pick(STRINGS);
  return pick([true, false, null]);
}

describe('fast JSON decoder', () => {
  it('gives what JSON.parse gives for generated values, and takes the common ones', () => {
    const r = rng(5);
    let taken = 0;
    let total = 0;
    for (let n = 0; n < 20000; n++) {
      const text = JSON.stringify(gen(r, 0));
      if (!/^[\x20-\x7e]*$/.test(text)) continue; // the ring offers only ASCII records
      total++;
      if (check(text)) taken++;
    }
    expect(total).toBeGreaterThan(10000);
    // It must not just decline everything.
    expect(taken).toBeGreaterThan(total / 4);
  });

  it('decodes the common message shapes', () => {
    for (const text of ['{"i":1,"s":"hello"}', '{}', '{"a":{"b":{"c":null}},"t":true,"f":false}', '0', '-0', '"x"', 'null',
      '{"i":-123456789012345,"s":""}', '{"2":1,"1":2,"b":3,"a":4}', '{"a":1,"a":2,"b":3}']) {
      expect(check(text), text).toBe(true);
    }
    expect(Object.is(fast('-0'), -0)).toBe(true);
    expect(Object.keys(fast('{"b":1,"2":1,"1":2}') as object)).toEqual(['1', '2', 'b']);
  });

  it('declines what it cannot reproduce with certainty', () => {
    for (const text of ['{"__proto__":{"x":1}}', '{"constructor":1}', '{"toString":"x"}', '[1,2]', '{"a":[]}', '1.5', '1e3', '1E3',
      '1234567890123456', '01', '-', '"a\\"b"', '"\\u0041"', ' {}', '{ "a":1}', '{"a" :1}', '{"a":1 }', '{"a":1}x', '{"a":1',
      '{"a"}', '{"a":}', '{,}', '{"a":1,}', 'tru', 'nul', 'falsey', '', '"abc', '{"a":"\t"}', '{"a":nan}']) {
      expect(fast(text), text).toBe(NOT_FAST);
    }
    // Nesting beyond 8 levels goes to JSON.parse.
    expect(fast('{"a":'.repeat(9) + '1' + '}'.repeat(9))).toBe(NOT_FAST);
    expect(check('{"a":'.repeat(8) + '1' + '}'.repeat(8))).toBe(true);
  });

  describe('with a property added to Object.prototype', () => {
    afterEach(() => {
      delete (Object.prototype as any).zz;
    });
    it('declines keys that meet a setter or read-only property there', () => {
      let called = 0;
      Object.defineProperty(Object.prototype, 'zz', { set: () => called++, get: () => 7, configurable: true });
      expect(fast('{"zz":1}')).toBe(NOT_FAST);
      expect(called).toBe(0);
      delete (Object.prototype as any).zz;
      Object.defineProperty(Object.prototype, 'zz', { value: 1, writable: false, configurable: true });
      expect(fast('{"zz":2}')).toBe(NOT_FAST);
    });
  });

  it('reuses cached strings only for identical bytes', () => {
    // Same length, same hash slot candidates: every value must come back as sent.
    for (let n = 0; n < 5000; n++) {
      const s = n.toString(36).padStart(4, '0');
      expect(fast(`{"k${s}":"${s}"}`)).toEqual({ [`k${s}`]: s });
    }
  });

  it('gives the same values through a queue as JSON does', () => {
    const q = new Queue();
    const r = rng(11);
    const sent: unknown[] = [];
    // No "__proto__" keys here: a value that takes the v8 path (a -0 inside)
    // loses such a key in serialize.ts's prepare(), which assigns keys (found
    // on the way; not the fast decoder's business).
    const keys = KEYS.filter((k) => k !== '__proto__');
    for (let n = 0; n < 2000; n++) {
      const v = gen(r, 0, keys);
      sent.push(v);
      q.putSync(v);
    }
    for (const v of sent) {
      // The generated values are plain data the codec carries exactly.
      sameShape(q.getSync(), v);
    }
    q.close();
  });
});

// The put side's one-pass writer: whatever it writes must be JSON.stringify's
// text byte for byte, and it may take only what the general path would also
// send as JSON.
describe('fast JSON encoder', () => {
  const out = new Uint8Array(ENCODE_LIMIT + ENCODE_SLACK);
  const enc = (v: unknown): string | null => {
    const n = encodeFast(v, out);
    return n < 0 ? null : Buffer.from(out.buffer, 0, n).toString('latin1');
  };

  it('writes what JSON.stringify writes for generated values, and takes the common ones', () => {
    const r = rng(7);
    let taken = 0;
    let ascii = 0;
    for (let n = 0; n < 20000; n++) {
      const v = gen(r, 0);
      const text = enc(v);
      const general = encodeJsonText(v);
      if (general !== undefined && /^[\x20-\x7e]*$/.test(general) && !/\\/.test(general)) ascii++;
      if (text === null) continue;
      taken++;
      expect(general, text).toBeDefined();
      expect(text).toBe(general);
    }
    expect(ascii).toBeGreaterThan(5000);
    // Everything plain, ASCII and without escapes is taken.
    expect(taken).toBe(ascii);
  });

  it('writes the common message shapes', () => {
    for (const v of [{ i: 1, s: 'hello' }, {}, [], [1, [2, [3]]], { a: { b: { c: null } }, t: true, f: false }, 0, 7, -7, 'x', null,
      true, 2 ** 31 - 1, -(2 ** 31), 2 ** 31, -(2 ** 31) - 1, 1.5, -2.5e-7, 1e21, 2 ** 53, Number.MAX_VALUE, 5e-324,
      { 2: 1, 1: 2, b: 3, a: 4 }, { ['__proto__']: 1 }, Object.defineProperty({}, '__proto__', { value: { x: 1 }, enumerable: true })]) {
      expect(enc(v), JSON.stringify(v)).toBe(JSON.stringify(v));
    }
  });

  it('leaves to the general path what is not plain ASCII JSON', () => {
    class Point {
      x = 1;
    }
    const holes = [1, , 3]; // eslint-disable-line no-sparse-arrays
    const refused = [undefined, () => 1, Symbol('s'), 1n, -0, NaN, Infinity, -Infinity, { a: -0 }, [undefined], { a: undefined },
      new Date(0), new Map(), new Set(), new Uint8Array(2), new Point(), Object.create(null), holes, 'é', 'a"b', 'a\\b', 'tab\t',
      '\u007f', { é: 1 }, { 'a"': 1 }, { '\u0000pmp': 'x' }, { toJSON: () => 1 }, [new Date(0)], { a: { b: [1, 2n] } }];
    refused.forEach((v, k) => expect(encodeFast(v, out), `refused[${k}]`).toBe(-1));
  });

  it('stops at its depth and length limits', () => {
    const nest = (d: number): unknown => (d === 0 ? 1 : { a: nest(d - 1) });
    expect(enc(nest(32))).toBe(JSON.stringify(nest(32)));
    expect(enc(nest(33))).toBeNull();
    const arr = (d: number): unknown => (d === 0 ? 1 : [arr(d - 1)]);
    expect(enc(arr(32))).toBe(JSON.stringify(arr(32)));
    expect(enc(arr(33))).toBeNull();
    expect(enc('x'.repeat(ENCODE_LIMIT - 2))).toBe(JSON.stringify('x'.repeat(ENCODE_LIMIT - 2)));
    expect(enc('x'.repeat(ENCODE_LIMIT - 1))).toBeNull();
    // Many numbers: the limit is checked per value, and the slack covers the rest.
    const many = Array.from({ length: 2000 }, (_, i) => -1e300 * (i + 1));
    expect(enc(many)).toBeNull();
    const fits = Array.from({ length: 150 }, () => -1.2345678901234567e-300);
    expect(enc(fits)).toBe(JSON.stringify(fits));
    expect(enc({ a: nest(31), b: 'x'.repeat(ENCODE_LIMIT) })).toBeNull();
  });

  it('reads each property once, and a throwing getter reaches the caller through the general path', () => {
    let reads = 0;
    const v = {
      get x() {
        reads++;
        return 1;
      },
    };
    expect(enc(v)).toBe('{"x":1}');
    expect(reads).toBe(1);
    const bad = {
      get x(): number {
        throw new Error('getter failed');
      },
    };
    expect(encodeFast(bad, out)).toBe(-1);
    const q = new Queue();
    expect(() => q.putSync(bad)).toThrow('getter failed');
    expect(q.empty()).toBe(true);
    q.close();
  });

  it('a getter that puts or sends another message while its value is written corrupts neither', async () => {
    const q = new Queue();
    const [a, b] = Pipe();
    const outer = (send: (v: unknown) => void) => ({
      i: 1,
      get inner() {
        send({ i: 2, s: 'inner message, long enough to overwrite the outer one' });
        return 'x';
      },
      t: 'tail',
    });
    q.putSync(outer((v) => q.putSync(v)));
    expect(q.getSync()).toEqual({ i: 2, s: 'inner message, long enough to overwrite the outer one' });
    expect(q.getSync()).toEqual({ i: 1, inner: 'x', t: 'tail' });
    a.send(outer((v) => a.send(v)));
    expect(await b.recv()).toEqual({ i: 2, s: 'inner message, long enough to overwrite the outer one' });
    expect(await b.recv()).toEqual({ i: 1, inner: 'x', t: 'tail' });
    q.close();
    a.close();
    b.close();
  });

  describe('with an enumerable property added to Object.prototype', () => {
    afterEach(() => {
      delete (Object.prototype as any).zz;
    });
    it('writes own keys only, as JSON.stringify does', () => {
      (Object.prototype as any).zz = 5;
      expect(enc({ a: 1 })).toBe('{"a":1}');
    });
  });

  it('keeps every message intact through many wraps of the ring, short and long', () => {
    const q = new Queue();
    const r = rng(3);
    for (let n = 0; n < 60000; n++) {
      const v = { n, s: 'y'.repeat(Math.floor(r() * 300)), a: [n, -n, n / 4] };
      q.putSync(v);
      if (n % 3 === 0) q.putSync(n);
      expect(q.getSync()).toEqual(v);
      if (n % 3 === 0) expect(q.getSync()).toBe(n);
    }
    expect(q.empty()).toBe(true);
    q.close();
  });
});
