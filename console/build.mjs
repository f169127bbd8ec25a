// Builds the console into functions/ai-jobs-console/static/ from src/ and the locked npm
// packages: one ES module bundle (plus a lazily loaded chunk for supabase-js), one CSS file
// and index.html. Deterministic: the same lockfile and sources give the same bytes.
//
//   node build.mjs           build into functions/ai-jobs-console/static/ and print the sizes
//   node build.mjs --check   build into a temporary folder; fail if the committed files differ
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const committed = join(here, '..', 'functions', 'ai-jobs-console', 'static');
const check = process.argv.includes('--check');
const out = check ? mkdtempSync(join(tmpdir(), 'console-build-')) : committed;

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

if (check) {
  const built = readdirSync(out).sort();
  const have = readdirSync(committed).sort();
  const stale = [...new Set([...built, ...have])].filter((name) => {
    try {
      return !readFileSync(join(out, name)).equals(readFileSync(join(committed, name)));
    } catch {
      return true;
    }
  });
  rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`the committed console build is stale (${stale.join(', ')}): run make console`);
    process.exit(1);
  }
  console.log('the committed console build matches its sources');
} else {
  let total = 0;
  let gz = 0;
  for (const name of readdirSync(out).sort()) {
    const bytes = readFileSync(join(out, name));
    const zipped = gzipSync(bytes).length;
    total += bytes.length;
    gz += zipped;
    console.log(`${name.padEnd(28)} ${String(bytes.length).padStart(8)} B  gzip ${String(zipped).padStart(7)} B`);
  }
  console.log(`${'total'.padEnd(28)} ${String(total).padStart(8)} B  gzip ${String(gz).padStart(7)} B`);
}
