// The CommonJS twin of targets.mjs.
exports.noop = function noop() {};
