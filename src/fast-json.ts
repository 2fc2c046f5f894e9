// A decoder for the common shape of small queue messages, reading the JSON
// text straight out of the ring's bytes: plain objects (nested too) whose
// values are integers, ASCII strings without escapes, booleans and null.
//
// Why: JSON.parse needs a JS string first (a copy out of the ring through a
// call into C++), and then its general machinery; for `{"i":1,"s":"hello"}`
// the two are most of a get. This walk does neither, and reuses the strings
// it has seen before (keys repeat from message to message).
//
// It must give exactly what JSON.parse gives, so it accepts only what it can
// reproduce with certainty and answers NOT_FAST for everything else, and the
// caller then takes the JSON.parse path over the same bytes:
// - numbers: integers of at most 15 digits only (exact in a double, so the
//   digit loop gives the same double JSON.parse does); "-0" gives -0 as it
//   does. Fractions, exponents, leading zeros → NOT_FAST.
// - strings: bytes 0x20-0x7e without '\' (no escapes, no UTF-8).
// - objects: built by assignment, which is what JSON.parse's
//   CreateDataProperty does, except when Object.prototype has a property of
//   that name (the `__proto__` accessor, or a setter or read-only property
//   someone added): such keys → NOT_FAST. Duplicate keys keep their first
//   position and the last value under both; integer-like keys are ordered
//   by the object itself under both.
// - arrays → NOT_FAST: an element write could meet an accessor on
//   Array.prototype, which JSON.parse's define would not.
// - any whitespace, other tokens, depth > 8, or trailing bytes → NOT_FAST.

import { hasExtraKeys } from './serialize';

export const NOT_FAST: unique symbol = Symbol('not fast');

const MAX_DEPTH = 8;
const MAX_DIGITS = 15;

// Strings of up to CACHE_MAX_LEN bytes are remembered by a hash of their
// bytes, and reused when the bytes match (a string is a value: a reused one
// is indistinguishable from a fresh one).
const CACHE_MAX_LEN = 24;
const CACHE_SIZE = 256;
const cache: string[] = new Array<string>(CACHE_SIZE).fill('');

interface RawBytes extends Uint8Array {
  latin1Slice(start: number, end: number): string;
}

const Q = 0x22; // "
const BACKSLASH = 0x5c;
const proto = Object.prototype;

let pos = 0;

/** The value of the JSON text in bytes[start, end), or NOT_FAST. bytes must be
 *  a Buffer (for latin1Slice). Never throws. */
export function decodeFast(bytes: Uint8Array, start: number, end: number): unknown {
  pos = start;
  // The ring calls this with its consumers' lock held: a throw here (a stack
  // overflow, when a caller is already deep) must not skip the unlock, so it
  // is turned into a refusal, and the caller's usual path reports it.
  let v: unknown;
  try {
    v = value(bytes as RawBytes, end, 0);
  } catch {
    return NOT_FAST;
  }
  if (v === NOT_FAST || pos !== end) return NOT_FAST;
  return v;
}

function value(b: RawBytes, end: number, depth: number): unknown {
  if (pos >= end) return NOT_FAST;
  const c = b[pos];
  if (c === Q) return string(b, end);
  if (c === 0x7b) return object(b, end, depth); // {
  if ((c >= 0x30 && c <= 0x39) || c === 0x2d) return integer(b, end);
  if (c === 0x74) return word(b, end, 0x72, 0x75, 0x65, -1, true); // true
  if (c === 0x66) return word(b, end, 0x61, 0x6c, 0x73, 0x65, false); // false
  if (c === 0x6e) return word(b, end, 0x75, 0x6c, 0x6c, -1, null); // null
  return NOT_FAST;
}

function word(b: RawBytes, end: number, c1: number, c2: number, c3: number, c4: number, v: unknown): unknown {
  const n = c4 < 0 ? 4 : 5;
  if (pos + n > end || b[pos + 1] !== c1 || b[pos + 2] !== c2 || b[pos + 3] !== c3) return NOT_FAST;
  if (c4 >= 0 && b[pos + 4] !== c4) return NOT_FAST;
  pos += n;
  return v;
}

function integer(b: RawBytes, end: number): unknown {
  let p = pos;
  const neg = b[p] === 0x2d;
  if (neg) p++;
  const first = p;
  let n = 0;
  while (p < end) {
    const d = b[p] - 0x30;
    if (d < 0 || d > 9) break;
    n = n * 10 + d;
    p++;
  }
  const digits = p - first;
  if (digits === 0 || digits > MAX_DIGITS) return NOT_FAST;
  if (b[first] === 0x30 && digits > 1) return NOT_FAST; // leading zero: not JSON
  // A fraction or exponent follows: JSON.parse's rounding, not ours.
  if (p < end && (b[p] === 0x2e || b[p] === 0x65 || b[p] === 0x45)) return NOT_FAST;
  pos = p;
  return neg ? -n : n;
}

// pos at the opening quote; leaves pos after the closing one.
function string(b: RawBytes, end: number): unknown {
  const s = pos + 1;
  let p = s;
  let h = 0;
  for (;;) {
    if (p >= end) return NOT_FAST;
    const c = b[p];
    if (c === Q) break;
    if (c < 0x20 || c > 0x7e || c === BACKSLASH) return NOT_FAST;
    h = (h * 31 + c) | 0;
    p++;
  }
  pos = p + 1;
  const len = p - s;
  if (len > CACHE_MAX_LEN) return b.latin1Slice(s, p);
  const slot = (h ^ (h >>> 8) ^ len) & (CACHE_SIZE - 1);
  const hit = cache[slot];
  if (hit.length === len) {
    let k = 0;
    while (k < len && hit.charCodeAt(k) === b[s + k]) k++;
    if (k === len) return hit;
  }
  const str = len === 0 ? '' : b.latin1Slice(s, p);
  cache[slot] = str;
  return str;
}

function object(b: RawBytes, end: number, depth: number): unknown {
  if (depth >= MAX_DEPTH) return NOT_FAST;
  pos++; // {
  const o: Record<string, unknown> = {};
  if (pos < end && b[pos] === 0x7d) {
    pos++;
    return o;
  }
  for (;;) {
    if (pos >= end || b[pos] !== Q) return NOT_FAST;
    const key = string(b, end);
    if (key === NOT_FAST) return NOT_FAST;
    // `in` sees the whole chain of Object.prototype (it has no prototype of
    // its own): a key found there might be an accessor or read-only.
    if ((key as string) in proto) return NOT_FAST;
    if (pos >= end || b[pos] !== 0x3a) return NOT_FAST; // :
    pos++;
    const v = value(b, end, depth + 1);
    if (v === NOT_FAST) return NOT_FAST;
    o[key as string] = v;
    if (pos >= end) return NOT_FAST;
    const c = b[pos++];
    if (c === 0x7d) return o; // }
    if (c !== 0x2c) return NOT_FAST; // ,
  }
}

// ---- the writing side --------------------------------------------------------
//
// encodeFast is the put side's counterpart: one walk over the value that
// checks it is plain JSON data and writes its JSON text as bytes at once,
// where the general path walks it to check (serialize.ts isJsonSafe), builds a
// string with JSON.stringify, measures it and then copies it. For a small
// message that is most of a put.
//
// It writes exactly what JSON.stringify would, for the values it accepts, and
// accepts only values the general path would also send as JSON (so what a
// consumer gets does not depend on which path a message took):
// - numbers: finite and not -0; int32s by a digit loop, others as String(v)
//   (the same shortest round-trip form JSON.stringify uses);
// - strings (keys too): bytes 0x20-0x7e without '"' or '\' (no escapes,
//   no UTF-8); booleans; null;
// - arrays without holes or extra own properties (JSON would drop those);
//   objects whose prototype is Object.prototype, keys in for-in order
//   (JSON.stringify's order), the codec's marker key refused;
// - anything else (undefined, functions, symbols, bigints, class instances,
//   Dates, buffers, non-ASCII or escaped text), depth > 32 or text longer
//   than ENCODE_LIMIT → -1, and the caller takes the general path.

/** Longest text encodeFast writes; the output buffer needs ENCODE_SLACK more. */
export const ENCODE_LIMIT = 4096;
// Checks happen at each value (a string checks its own length): between two
// checks at most a number (25 bytes) and the closing brackets of every open
// level (33) are written unchecked.
export const ENCODE_SLACK = 128;
const ENCODE_DEPTH = 32;
const MARK = '\u0000pmp'; // serialize.ts: keys of the codec's own envelopes

let wpos = 0;
/** Where the text being written may end: start + ENCODE_LIMIT. */
let wlimit = 0;
/** Set while a value is being written: a getter of it may send or put another
 *  message, whose encodeFast must not reuse wpos (nor the caller's scratch). */
let writing = false;

/** Writes value's JSON text into out from start; returns its length, or -1
 *  when the general path must encode it. out must have room for
 *  start + ENCODE_LIMIT + ENCODE_SLACK bytes. */
export function encodeFast(value: unknown, out: Uint8Array, start = 0): number {
  // Called from a getter of the value being written: that message takes the
  // general path, which has no shared state.
  if (writing) return -1;
  writing = true;
  wpos = start;
  wlimit = start + ENCODE_LIMIT;
  try {
    return write(value, out, 0) ? wpos - start : -1;
  } catch {
    // A getter that throws, or a stack overflow: the general path reports it.
    return -1;
  } finally {
    writing = false;
  }
}

function write(v: unknown, out: Uint8Array, depth: number): boolean {
  if (wpos > wlimit) return false;
  switch (typeof v) {
    case 'string':
      return writeString(v, out);
    case 'number':
      return writeNumber(v, out);
    case 'boolean':
      return v ? writeWord(out, 0x74, 0x72, 0x75, 0x65, -1) : writeWord(out, 0x66, 0x61, 0x6c, 0x73, 0x65);
    case 'object':
      if (v === null) return writeWord(out, 0x6e, 0x75, 0x6c, 0x6c, -1);
      if (depth >= ENCODE_DEPTH) return false;
      if (Array.isArray(v)) return writeArray(v, out, depth);
      if (Object.getPrototypeOf(v) !== proto) return false;
      return writeObject(v as Record<string, unknown>, out, depth);
    default:
      return false;
  }
}

function writeWord(out: Uint8Array, c0: number, c1: number, c2: number, c3: number, c4: number): boolean {
  out[wpos] = c0;
  out[wpos + 1] = c1;
  out[wpos + 2] = c2;
  out[wpos + 3] = c3;
  if (c4 < 0) {
    wpos += 4;
  } else {
    out[wpos + 4] = c4;
    wpos += 5;
  }
  return true;
}

function writeString(s: string, out: Uint8Array): boolean {
  const n = s.length;
  if (wpos + n + 2 > wlimit) return false;
  let p = wpos;
  out[p++] = Q;
  for (let k = 0; k < n; k++) {
    const c = s.charCodeAt(k);
    if (c < 0x20 || c > 0x7e || c === Q || c === BACKSLASH) return false;
    out[p++] = c;
  }
  out[p++] = Q;
  wpos = p;
  return true;
}

function writeNumber(v: number, out: Uint8Array): boolean {
  if ((v | 0) === v) {
    if (v === 0 && 1 / v < 0) return false; // -0: JSON would turn it into 0
    let p = wpos;
    let u = v;
    if (u < 0) {
      out[p++] = 0x2d;
      u = -u; // at most 2^31: still exact, and (u / 10) | 0 stays in range
    }
    let digits = 1;
    for (let t = u; t >= 10; t = (t / 10) | 0) digits++;
    p += digits;
    wpos = p;
    do {
      const q = (u / 10) | 0;
      out[--p] = 0x30 + (u - q * 10);
      u = q;
    } while (u > 0);
    return true;
  }
  if (!Number.isFinite(v)) return false;
  const t = String(v);
  for (let k = 0; k < t.length; k++) out[wpos + k] = t.charCodeAt(k);
  wpos += t.length;
  return true;
}

function writeArray(a: unknown[], out: Uint8Array, depth: number): boolean {
  out[wpos++] = 0x5b; // [
  for (let i = 0; i < a.length; i++) {
    if (i > 0) out[wpos++] = 0x2c;
    if (!(i in a) || !write(a[i], out, depth + 1)) return false;
  }
  out[wpos++] = 0x5d; // ]
  return !hasExtraKeys(a);
}

function writeObject(o: Record<string, unknown>, out: Uint8Array, depth: number): boolean {
  out[wpos++] = 0x7b; // {
  // Object.keys, not for-in: own enumerable keys in JSON.stringify's order,
  // and nothing someone made enumerable on Object.prototype.
  const keys = Object.keys(o);
  for (let k = 0; k < keys.length; k++) {
    const key = keys[k];
    if (key === MARK) return false;
    if (k > 0) out[wpos++] = 0x2c;
    if (!writeString(key, out)) return false;
    out[wpos++] = 0x3a; // :
    if (!write(o[key], out, depth + 1)) return false;
  }
  out[wpos++] = 0x7d; // }
  return true;
}
