import { afterEach, describe, expect, it, vi } from 'vitest';

import longTimeout from '../dist/cjs/long-timeout.js';

const { setLongTimeout } = longTimeout as typeof import('../src/long-timeout');
const DAY = 24 * 3600 * 1000;

describe('setLongTimeout', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('fires after delays setTimeout cannot take (2^31 ms and more), not before', () => {
    vi.useFakeTimers();
    const fired: number[] = [];
    setLongTimeout(() => fired.push(40), 40 * DAY);
    setLongTimeout(() => fired.push(1), 1 * DAY);
    vi.advanceTimersByTime(DAY);
    expect(fired).toEqual([1]);
    vi.advanceTimersByTime(25 * DAY); // past one full setTimeout step (24.8 days)
    expect(fired).toEqual([1]);
    vi.advanceTimersByTime(14 * DAY - 1);
    expect(fired).toEqual([1]);
    vi.advanceTimersByTime(1);
    expect(fired).toEqual([1, 40]);
  });

  it('clear() stops it in any step', () => {
    vi.useFakeTimers();
    const fn = vi.fn();
    const t = setLongTimeout(fn, 60 * DAY);
    vi.advanceTimersByTime(30 * DAY);
    t.clear();
    vi.advanceTimersByTime(60 * DAY);
    expect(fn).not.toHaveBeenCalled();
  });
});
