// Validation of user arguments at the public boundary, with uniform messages
// that name the argument and what was expected.

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'function') return `function ${value.name || '(anonymous)'}`;
  if (typeof value === 'symbol') return value.toString();
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`;
  if (typeof value === 'object') return `an instance of ${(value as object).constructor?.name ?? 'Object'}`;
  return `${typeof value} ${String(value)}`;
}

export function invalidType(name: string, expected: string, value: unknown): TypeError {
  const e = new TypeError(`${name} must be ${expected}; received ${describe(value)}`) as TypeError & { code: string };
  e.code = 'ERR_INVALID_ARG_TYPE';
  return e;
}

/** A value of the right type that cannot be used: `${name} ${requirement}`. */
export function invalidValue(name: string, requirement: string, value: unknown): TypeError {
  const e = new TypeError(`${name} ${requirement}; received ${describe(value)}`) as TypeError & { code: string };
  e.code = 'ERR_INVALID_ARG_VALUE';
  return e;
}

export function outOfRange(name: string, expected: string, value: unknown): RangeError {
  const e = new RangeError(`${name} must be ${expected}; received ${describe(value)}`) as RangeError & { code: string };
  e.code = 'ERR_OUT_OF_RANGE';
  return e;
}

/** A timeout in seconds: undefined/null mean "no limit"; otherwise >= 0 (Infinity allowed). */
export function validateTimeout(value: unknown, name = 'timeout'): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw invalidType(name, 'a non-negative number of seconds', value);
  }
  if (value < 0) throw outOfRange(name, 'a non-negative number of seconds', value);
  return value === Infinity ? undefined : value;
}

export function validateObject(value: unknown, name: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw invalidType(name, 'an object', value);
  }
  return value as Record<string, unknown>;
}

export function validateBoolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw invalidType(name, 'a boolean', value);
  return value;
}

export function validateString(value: unknown, name: string): string {
  if (typeof value !== 'string') throw invalidType(name, 'a string', value);
  return value;
}

export function validateInteger(value: unknown, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw invalidType(name, 'an integer', value);
  if (value < min || value > max) {
    throw outOfRange(name, max === Number.MAX_SAFE_INTEGER ? `a safe integer >= ${min}` : `an integer between ${min} and ${max}`, value);
  }
  return value;
}

/** What an options argument may hold, for validateOptions. */
export interface OptionsSpec {
  /** The call the options belong to, as messages name it: 'q.get()'. */
  readonly call: string;
  readonly keys: readonly string[];
  /** The option a Python-style positional number or boolean stands for (q.get(5), lock.acquire(false)). */
  readonly number?: string;
  readonly boolean?: string;
  /** The last object that passed (see validateOptions). */
  lastOk?: object;
}

/**
 * An options object: undefined is {}; anything else must be a plain object
 * whose keys the call knows. A typo such as { timeot: 5 } would otherwise wait
 * for ever, and a Python-style positional call (q.get(5)) would be read as
 * "no options": both throw a TypeError that says what to write instead.
 */
export function validateOptions(value: unknown, spec: OptionsSpec, name = 'options'): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    const key = typeof value === 'number' ? spec.number : typeof value === 'boolean' ? spec.boolean : undefined;
    if (key !== undefined) {
      const form = `${spec.call.replace(/\(\)$/, '')}({ ${key}: ${String(value)} })`;
      const e = new TypeError(`${spec.call} takes an options object, not a positional ${typeof value}: write ${form}`) as TypeError & {
        code: string;
      };
      e.code = 'ERR_INVALID_ARG_TYPE';
      throw e;
    }
    throw invalidType(name, 'an object', value);
  }
  const o = value as Record<string, unknown>;
  // The scan of the keys costs about 9 ns, as much as a whole try-acquire: an
  // options object reused from call to call (a constant, as hot loops hoist
  // them) is scanned the first time only. (One that gains a key afterwards is
  // not scanned again: options objects are not expected to change.)
  if (o === spec.lastOk) return o;
  for (const key in o) {
    if (!spec.keys.includes(key)) throw unknownOption(name, key, spec);
  }
  spec.lastOk = o;
  return o;
}

function unknownOption(name: string, key: string, spec: OptionsSpec): TypeError {
  const close = spec.keys.find((k) => editDistance(k, key) <= Math.max(1, Math.floor(k.length / 3)));
  const known = spec.keys.length === 0 ? 'it takes none' : `known: ${spec.keys.join(', ')}`;
  const e = new TypeError(
    `${name}.${key} is not an option of ${spec.call}${close ? ` (did you mean '${close}'?)` : ''}; ${known}`,
  ) as TypeError & { code: string };
  e.code = 'ERR_MP_UNKNOWN_OPTION';
  return e;
}

// The edit distance of two short strings (option names), counting a swap of
// two neighbours as one edit (optimal string alignment), for the hint.
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

export function validateSignal(value: unknown, name = 'options.signal'): AbortSignal | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof AbortSignal)) throw invalidType(name, 'an AbortSignal', value);
  return value;
}
