// Where the package's own files are. Children run compiled JavaScript from
// dist/cjs (the child bootstrap, pool workers, the resource tracker), also
// when the parent runs this code from its TypeScript sources under a test
// runner or a loader, where __dirname is src/.
import * as fs from 'node:fs';
import * as path from 'node:path';

function findRoot(): string {
  let dir = __dirname;
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    try {
      if (JSON.parse(fs.readFileSync(manifest, 'utf8')).name === 'posix-multiprocessing') return dir;
    } catch {
      // no manifest here, or not ours
    }
    const parent = path.dirname(dir);
    if (parent === dir) return path.resolve(__dirname, '..', '..');
    dir = parent;
  }
}

/** The package's root directory (where package.json and binding.gyp are). */
export const packageRoot = findRoot();

/** The compiled CommonJS build that child processes run. */
export const distDir = __filename.endsWith('.js') ? __dirname : path.join(packageRoot, 'dist', 'cjs');
