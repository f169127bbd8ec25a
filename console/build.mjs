// Builds the console into functions/ai-jobs-console/static/ from src/ and the locked npm
// packages: one ES module bundle (plus a lazily loaded chunk for supabase-js), one CSS file
// and index.html. Deterministic: the same lockfile and sources give the same bytes.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'functions', 'ai-jobs-console', 'static');

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { app: join(here, 'src', 'app.js') },
  bundle: true,
  splitting: true,
  format: 'esm',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  minify: true,
  legalComments: 'linked',
  chunkNames: 'chunk-[hash]',
  outdir: out,
  logLevel: 'warning',
});
copyFileSync(join(here, 'src', 'index.html'), join(out, 'index.html'));

let total = 0;
let gz = 0;
for (const name of readdirSync(out).sort()) {
  const bytes = readFileSync(join(out, name));
  total += statSync(join(out, name)).size;
  gz += gzipSync(bytes).length;
  console.log(`${name.padEnd(28)} ${String(bytes.length).padStart(8)} B  gzip ${String(gzipSync(bytes).length).padStart(7)} B`);
}
console.log(`${'total'.padEnd(28)} ${String(total).padStart(8)} B  gzip ${String(gz).padStart(7)} B`);
