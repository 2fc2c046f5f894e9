// Validation of user arguments at the public boundary, with uniform messages
// that name the argument and what was expected.

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`;
  if (typeof value === 'object') return `an instance of ${(value as object).constructor?.name ?? 'Object'}`;
  return `${typeof value} ${String(value)}`;
}

export function invalidType(name: string, expected: string, value: unknown): TypeError {
  const e = new TypeError(`${name} must be ${expected}; received ${describe(value)}`) as TypeError & { code: string };
  e.code = 'ERR_INVALID_ARG_TYPE';
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
    throw outOfRange(name, max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `between ${min} and ${max}`, value);
  }
  return value;
}

export function validateSignal(value: unknown, name = 'options.signal'): AbortSignal | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof AbortSignal)) throw invalidType(name, 'an AbortSignal', value);
  return value;
}
