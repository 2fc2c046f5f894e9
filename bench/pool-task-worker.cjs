// workerpool's process-mode worker for bench/pool.bench.mjs.
const workerpool = require('workerpool');
workerpool.worker({ identity: (x) => x });
