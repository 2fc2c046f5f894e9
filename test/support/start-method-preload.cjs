// Loaded first by every Node program a test of the start-method matrix starts
// (NODE_OPTIONS=--require, set by start-method.ts): makes PMP_TEST_START_METHOD
// that program's start method, as setStartMethod() at its top would. The
// package's own processes (children, the forkserver, the resource tracker)
// are left alone: a child must start as users see it, without the package
// index loaded ahead of what it needs.
const method = process.env.PMP_TEST_START_METHOD;
const main = process.argv[1] ?? '';
if (method && !/[\\/]dist[\\/]cjs[\\/](child[\\/]|tracker-main\.js$)/.test(main)) {
  require('../../dist/cjs/index.js').setStartMethod(method);
}
