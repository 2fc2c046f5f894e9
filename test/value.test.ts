import * as fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';

import { Process, RawArray, RawValue, SharedArray, Value } from 'posix-multiprocessing';
import * as shmTargets from './fixtures/shm.mjs';

const heapSegments = () => fs.readdirSync('/dev/shm').filter((e) => e.startsWith(`pmp-${process.pid}-`));

async function runAll(procs: Process[], timeout = 30): Promise<number[]> {
  for (const p of procs) p.start();
  return Promise.all(procs.map((p) => p.join(timeout) as Promise<number>));
}

// [typecode, initial, value the child writes]
const scalars: [string, number | bigint, number | bigint][] = [
  ['b', -5, 127],
  ['B', 200, 255],
  ['h', -30000, 32767],
  ['H', 65535, 1],
  ['i', -2147483648, 2147483647],
  ['I', 4294967295, 3],
  ['l', -(2n ** 63n), 2n ** 63n - 1n],
  ['L', 2n ** 64n - 1n, 5n],
  ['q', -123456789012345n, 9007199254740993n],
  ['Q', 18446744073709551615n, 0n],
  ['f', 1.5, -0.25],
  ['d', Math.PI, -1e300],
];

describe('Value and Array types', () => {
  it('stores every typecode and name; 64-bit types are bigint', () => {
    for (const [code, initial] of scalars) {
      const v = new RawValue(code as any, initial);
      expect(v.value).toBe(initial);
      expect(v.typecode).toBe(code);
    }
    expect(typeof new RawValue('l', 1).value).toBe('bigint'); // C long is 64-bit on LP64, as in CPython
    expect(new RawValue('int16', -2).typecode).toBe('h');
    expect(new RawValue('uint64', 2n).value).toBe(2n);
    expect(new RawValue('float32', 0.5).value).toBe(0.5);
    expect(new RawValue('i').value).toBe(0);
    expect(new RawArray('int32', 3).array).toBeInstanceOf(Int32Array);
    expect(new RawArray('Q', [1n, 2n]).array).toBeInstanceOf(BigUint64Array);
    expect(new RawArray('d', [0, 1, 2]).array).toEqual(new Float64Array([0, 1, 2]));
    // integers wrap as C does
    const b = new RawValue('b', 0);
    b.value = 130;
    expect(b.value).toBe(-126);
  });

  it('rejects bad types and values with TypeError/RangeError', () => {
    expect(() => new RawValue('x' as any, 0)).toThrow(RangeError);
    expect(() => new RawValue('c' as any, 0)).toThrow(/type must be one of/);
    expect(() => new RawValue(3 as any, 0)).toThrow(TypeError);
    expect(() => new RawValue('i', 'one' as any)).toThrow(TypeError);
    expect(() => new RawValue('q', 1.5)).toThrow(TypeError);
    const v = new RawValue('i', 0);
    expect(() => ((v as any).value = 'x')).toThrow(TypeError);
    // A fraction in an integer type is refused, as ctypes' c_int(1.5) is; floats take it.
    expect(() => new RawValue('i', 1.5)).toThrow(/an integer for type 'i'/);
    expect(() => (v.value = 2.5)).toThrow(TypeError);
    expect(() => (v.value = NaN)).toThrow(TypeError);
    expect(() => new RawArray('B', [1, 0.5])).toThrow(/sizeOrValues\[1\]/);
    expect(new RawValue('d', 1.5).value).toBe(1.5);
    expect(new RawValue('b', 300).value).toBe(44); // out of range wraps, as in ctypes
    const q = new RawValue<bigint>('q', 0n);
    q.value = 5 as any; // a safe integer is accepted for 64-bit types
    expect(q.value).toBe(5n);
    expect(() => new RawArray('d', -1)).toThrow(RangeError);
    expect(() => new RawArray('d', 1.5)).toThrow(TypeError);
    expect(() => new RawArray('d', 2 ** 31 - 1)).toThrow(RangeError); // 16 GiB: more than one ArrayBuffer can hold
    expect(() => new RawArray('d', 'abc' as any)).toThrow(TypeError);
    expect(() => new RawArray('d', [1, 'x'] as any)).toThrow(/sizeOrValues\[1\]/);
    expect(() => new Value('i', 0, { lock: 'yes' as any })).toThrow(TypeError);
    expect(() => new SharedArray('i', 2, { lock: {} as any })).toThrow(TypeError);
  });

  it('lock: false gives no lock; a user-supplied lock is returned by getLock()', () => {
    const raw = new Value('i', 0, { lock: false });
    expect(() => raw.getLock()).toThrow(expect.objectContaining({ code: 'ERR_MP_NO_LOCK' }));
    const lock = new shmTargets.SpinLock();
    try {
      const v = new Value('i', 0, { lock });
      expect(v.getLock()).toBe(lock);
      const a = new SharedArray('d', 3, { lock });
      expect(a.getLock()).toBe(lock);
      expect(() => new SharedArray('d', 3, { lock: false }).getLock()).toThrow(expect.objectContaining({ code: 'ERR_MP_NO_LOCK' }));
    } finally {
      lock.destroy();
    }
  });

  it('close(): Value throws ERR_MP_CLOSED, an Array detaches its view (length 0)', () => {
    const v = new RawValue('d', 1);
    v.close();
    v.close();
    expect(() => v.value).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    expect(() => (v.value = 2)).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    const a = new RawArray('i', [1, 2, 3]);
    const view = a.array;
    a[Symbol.dispose]();
    expect(view.length).toBe(0);
    expect(view[0]).toBeUndefined();
    expect(() => a.array).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    expect(a.length).toBe(3);
    // The locked kinds' getLock() too.
    const lv = new Value('i', 1);
    lv.close();
    expect(() => lv.getLock()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
    const la = new SharedArray('i', 2);
    la.close();
    expect(() => la.getLock()).toThrow(expect.objectContaining({ code: 'ERR_MP_CLOSED' }));
  });

  it('many small Values share one mapping (the shared heap)', () => {
    const before = heapSegments().length;
    const values = Array.from({ length: 2000 }, (_, i) => new RawValue('i', i));
    expect(heapSegments().length - before).toBeLessThanOrEqual(1);
    expect(values[1999].value).toBe(1999);
  });
});

describe('Value and Array across processes', () => {
  it('a child sees what the parent wrote and the parent sees what the child wrote, for every typecode', async () => {
    const items: [unknown, unknown, unknown][] = [];
    const expectedAfter: [unknown, unknown][] = [];
    for (const [code, initial, next] of scalars) {
      const v = new RawValue(code as any, initial);
      const locked = new Value(code as any, initial, { lock: false });
      items.push([v, initial, next], [locked, initial, next]);
      expectedAfter.push([v, next], [locked, next]);
      const arr = new RawArray(code as any, [initial, next]);
      const sarr = new SharedArray(code as any, [next, initial], { lock: false });
      items.push([arr, [initial, next], [next, initial]], [sarr, [next, initial], [initial, next]]);
      expectedAfter.push([arr, [next, initial]], [sarr, [initial, next]]);
    }
    const p = new Process({ target: shmTargets.checkAndWrite, args: [items] });
    p.start();
    expect(await p.join(20)).toBe(0);
    for (const [obj, want] of expectedAfter) {
      if (Array.isArray(want)) expect(Array.from((obj as RawArray).array)).toEqual(want);
      else expect((obj as RawValue).value).toBe(want);
    }
  });

  it("scenario 17: Array('d', [0, 1, 2]) written by a child is seen by the parent", async () => {
    const arr = new SharedArray('d', [0, 1, 2], { lock: false });
    const p = new Process({ target: shmTargets.writeArray, args: [arr, [3.5, -1, 1e10]] });
    p.start();
    expect(await p.join(20)).toBe(0);
    expect(Array.from(arr.array)).toEqual([3.5, -1, 1e10]);
  });

  it('scenario 17: ten children adding 1 twenty times without a lock lose updates', async () => {
    const v = new RawValue('i', 0);
    const codes = await runAll(Array.from({ length: 10 }, () => new Process({ target: shmTargets.addUnlocked, args: [v, 20, 5] })));
    expect(codes).toEqual(Array(10).fill(0));
    expect(v.value).toBeGreaterThan(0);
    expect(v.value).toBeLessThan(200);
  }, 40_000);

  it('scenario 17: with a user-supplied lock (getLock()) the total is exactly 200', async () => {
    const lock = new shmTargets.SpinLock();
    try {
      const v = new Value('i', 0, { lock });
      const codes = await runAll(Array.from({ length: 10 }, () => new Process({ target: shmTargets.addLocked, args: [v, 20, 1] })));
      expect(codes).toEqual(Array(10).fill(0));
      expect(v.value).toBe(200);
    } finally {
      lock.destroy();
    }
  }, 40_000);

  it('scenario 17: with a separate lock the total is exactly 200', async () => {
    const lock = new shmTargets.SpinLock();
    try {
      const v = new RawValue('i', 0);
      const codes = await runAll(
        Array.from({ length: 10 }, () => new Process({ target: shmTargets.addWithLock, args: [v, lock, 20, 1] })),
      );
      expect(codes).toEqual(Array(10).fill(0));
      expect(v.value).toBe(200);
    } finally {
      lock.destroy();
    }
  }, 40_000);
});

afterAll(() => {
  // The heap's segments are process-lifetime (unlinked at exit); the test locks' segments must be gone.
  expect(fs.readdirSync('/dev/shm').filter((e) => e.startsWith(`pmp_${process.pid}_`))).toEqual([]);
});
