// A POSIX named semaphore shared by Node and Python: Semaphore(2, { name, posix: true })
// limits two Node children and three Python programs (ctypes sem_open on the same
// name) to two inside at once. Without python3, only the Node side runs.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Process, Semaphore, isMainProcess } from 'posix-multiprocessing';

const HOLD_MS = 300;

export async function nodeWorker(sem, log) {
  await sem.withLock(async () => {
    fs.appendFileSync(log, `+${Date.now()}\n`);
    await sleep(HOLD_MS);
    fs.appendFileSync(log, `-${Date.now()}\n`);
  });
  sem.close();
}

// What a Python program does to meet it: sem_open the same name, wait, post.
const PYTHON = `
import ctypes, sys, time
# The interpreter's own symbols include libc's sem_open (glibc >= 2.34, macOS;
# older glibc has it in libpthread, which python3 links). find_library would
# spawn ldconfig or a compiler to find the file.
libc = ctypes.CDLL(None, use_errno=True)
libc.sem_open.restype = ctypes.c_void_p
p = libc.sem_open(sys.argv[1].encode(), ctypes.c_int(0))
if p in (None, 0, ctypes.c_void_p(-1).value): sys.exit('sem_open failed: errno %d' % ctypes.get_errno())
s = ctypes.c_void_p(p)
libc.sem_wait(s)
with open(sys.argv[2], 'a') as f: f.write('+%d\\n' % int(time.time() * 1000))
time.sleep(${HOLD_MS} / 1000)
with open(sys.argv[2], 'a') as f: f.write('-%d\\n' % int(time.time() * 1000))
libc.sem_post(s)
libc.sem_close(s)
`;

if (isMainProcess()) {
  const name = `pmp-example-${process.pid}`;
  const log = path.join(os.tmpdir(), `pmp-posix-sem-${process.pid}.log`);
  fs.writeFileSync(log, '');
  const sem = new Semaphore(2, { name, posix: true });
  try {
    // Each resolves true when the program ran, false when there is no python3.
    const programs = [0, 1, 2].map(
      () =>
        new Promise((resolve, reject) =>
          execFile('python3', ['-c', PYTHON, `/${name}`, log], (err) =>
            err?.code === 'ENOENT' ? resolve(false) : err ? reject(err) : resolve(true),
          ),
        ),
    );
    const kids = [0, 1].map(() => new Process({ target: nodeWorker, args: [sem, log] }));
    kids.forEach((k) => k.start());
    for (const k of kids) if ((await k.join()) !== 0) throw new Error('a Node child failed');
    const python = (await Promise.all(programs)).every(Boolean);

    const events = fs.readFileSync(log, 'utf8').split('\n').filter(Boolean)
      .map((l) => ({ t: Number(l.slice(1)), d: l[0] === '+' ? 1 : -1 }))
      .sort((a, b) => a.t - b.t || a.d - b.d);
    let inside = 0;
    let max = 0;
    for (const e of events) max = Math.max(max, (inside += e.d));
    const holders = events.length / 2;
    console.log(`${holders} holders (${python ? '2 Node, 3 Python' : '2 Node; python3 not found'}), at most ${max} inside at once, value back to ${sem.getValue()}`);
    if (max > 2 || holders !== (python ? 5 : 2) || sem.getValue() !== 2) process.exit(1);
    console.log('OK');
  } finally {
    sem.close();
    Semaphore.unlink(name, { posix: true });
    fs.rmSync(log, { force: true });
  }
}
