// Timeouts here are in seconds and may be as long as the caller likes, but
// setTimeout() takes at most 2^31 - 1 ms (24.8 days): a longer delay fires at
// once, after a TimeoutOverflowWarning. A long timeout waits in steps.
const MAX_DELAY_MS = 2 ** 31 - 1;

export interface LongTimeout {
  clear(): void;
}

/** Calls fn once, after ms milliseconds, however many that is. */
export function setLongTimeout(fn: () => void, ms: number): LongTimeout {
  const due = Date.now() + ms;
  let timer: NodeJS.Timeout;
  const step = (left: number): void => {
    timer = setTimeout(() => {
      const rest = due - Date.now();
      if (rest > 0) step(rest);
      else fn();
    }, Math.min(left, MAX_DELAY_MS));
  };
  step(ms);
  return { clear: () => clearTimeout(timer) };
}
