#!/usr/bin/env node
// Cargo target runner for wasm32-wasip1 test binaries, using only Node's built-in
// `node:wasi` (WASI preview1). No wasmtime/wasmer needed.
//
//   node --no-warnings scripts/wasi-run.mjs <test.wasm> [args...]
//
// Cargo invokes it as `<runner> <path/to/test.wasm> <libtest args...>` (see scripts/test-wasm).
//
// * argv: WASI args are [<test.wasm>, ...args], so libtest sees its flags as usual.
// * env:  the whole process environment is passed through (RUST_BACKTRACE, RUST_TEST_*, ...).
// * fs:   only the current directory is preopened (as "." and as its absolute path);
//         libtest itself needs no files. Extra dirs: WASI_RUN_PREOPEN="/a:/b" (colon separated).
// * imports that are not WASI (e.g. `env.proxy_*` host functions referenced by the
//   proxy-wasm crate) are stubbed generically from the module's import list: each stub traps
//   (throws a RuntimeError naming the import) if it is ever called, so instantiation succeeds and a
//   stray host call fails loudly instead of silently "succeeding".
// * exit code: the guest's proc_exit code is propagated; a trap (which is what a Rust panic
//   becomes on wasm32-wasip1: panic=abort -> `unreachable`) exits with 134, like SIGABRT natively.
//
// Set WASI_RUN_VERBOSE=1 to print the stubbed imports and unfiltered trap backtraces.

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import process from 'node:process';

// Drop Node's "WASI is an experimental feature" warning even when --no-warnings was not given;
// every other warning is still printed by the original listeners.
const originalWarningListeners = process.listeners('warning');
process.removeAllListeners('warning');
process.on('warning', (warning) => {
  if (warning?.name === 'ExperimentalWarning' && /WASI/i.test(String(warning.message))) return;
  for (const listener of originalWarningListeners) listener.call(process, warning);
});

const { WASI } = await import('node:wasi');

const TAG = '[wasi-run]';
Error.stackTraceLimit = 200; // keep the Rust frames of a trap, not just the panic machinery
const [wasmPath, ...guestArgs] = process.argv.slice(2);
if (!wasmPath) {
  process.stderr.write(`usage: node scripts/wasi-run.mjs <module.wasm> [args...]\n`);
  process.exit(2);
}

const WASI_MODULES = new Set(['wasi_snapshot_preview1', 'wasi_unstable']);

function preopens() {
  const cwd = process.cwd();
  const dirs = { '.': cwd, [cwd]: cwd };
  for (const dir of (process.env.WASI_RUN_PREOPEN ?? '').split(':').filter(Boolean)) {
    dirs[dir] = path.resolve(dir);
  }
  return dirs;
}

function stubImports(module) {
  const stubs = {};
  const stubbed = [];
  for (const imp of WebAssembly.Module.imports(module)) {
    if (WASI_MODULES.has(imp.module)) continue;
    const name = `${imp.module}.${imp.name}`;
    if (imp.kind !== 'function') {
      // Memories/tables/globals cannot be sensibly faked; say so instead of a cryptic LinkError.
      throw new Error(`${TAG} ${wasmPath} imports non-function ${imp.kind} ${name}; not supported`);
    }
    stubs[imp.module] ??= {};
    stubs[imp.module][imp.name] = () => {
      throw new WebAssembly.RuntimeError(
        `host function ${name} called, but it is only a stub here (no Envoy host)`,
      );
    };
    stubbed.push(name);
  }
  if (stubbed.length && process.env.WASI_RUN_VERBOSE) {
    process.stderr.write(`${TAG} stubbed ${stubbed.length} import(s): ${stubbed.join(', ')}\n`);
  }
  return stubs;
}

// Demangle just enough of a Rust symbol (v0 `_R...` or legacy `_ZN...E`) to read its path,
// e.g. `_RNvNtCs1a2b_12agent_budget3sse5tests4case` -> `agent_budget::sse::tests::case`.
// Generic arguments and closures come out approximate; this is for humans, not tools.
const LEGACY_ESCAPES = {
  $SP$: '@', $BP$: '*', $RF$: '&', $LT$: '<', $GT$: '>', $LP$: '(', $RP$: ')', $C$: ',',
};
function unescapeLegacy(ident) {
  return ident
    .replace(/^_(?=\$)/, '')
    .replace(/\$u([0-9a-f]+)\$/g, (_, hex) => String.fromCodePoint(parseInt(hex, 16)))
    .replace(/\$(SP|BP|RF|LT|GT|LP|RP|C)\$/g, (m) => LEGACY_ESCAPES[m])
    .replace(/\.\./g, '::');
}
function demangle(symbol) {
  const v0 = symbol.startsWith('_R');
  if (!v0 && !symbol.startsWith('_ZN')) return symbol;
  const parts = [];
  for (let i = v0 ? 2 : 3; i < symbol.length; ) {
    const rest = symbol.slice(i);
    const disambiguator = v0 && /^[CMXY]s[0-9A-Za-z]*_/.exec(rest); // crate hash, impl disambiguator
    if (disambiguator) { i += disambiguator[0].length; continue; }
    const m = /^[1-9][0-9]*/.exec(rest);
    if (!m) { i += 1; continue; }
    const n = Number(m[0]);
    let j = i + m[0].length;
    const separated = v0 && symbol[j] === '_'; // v0: `_` only before identifiers starting with `_`
    if (separated) j += 1;
    const ident = symbol.slice(j, j + n);
    const ok =
      ident.length === n &&
      (v0 ? /^[A-Za-z_][A-Za-z0-9_]*$/ : /^[A-Za-z_$.][A-Za-z0-9_$.]*$/).test(ident) &&
      (!separated || ident.startsWith('_'));
    if (!ok) { i += m[0].length; continue; }
    if (v0 || !/^h[0-9a-f]{16}$/.test(ident)) parts.push(v0 ? ident : unescapeLegacy(ident));
    i = j + n;
  }
  return parts.length ? parts.join('::') : symbol;
}

const HIDDEN_FRAME = /^(std|core|alloc|test|panic_abort|panic_unwind)::|^(__rustc|__rust_|rust_begin_unwind|rust_panic|abort$|_start$|__main_void$|__original_main$|main$)/;

// Rust-level frames of a trap, innermost first, std/core/libtest machinery hidden.
function wasmBacktrace(err) {
  const frames = [];
  for (const line of String(err?.stack ?? '').split('\n')) {
    const m = /^\s*at (?:\S*?\.wasm\.)?(\S+) \(wasm:\/\//.exec(line);
    if (!m) continue;
    const name = demangle(m[1]);
    if (process.env.WASI_RUN_VERBOSE || !HIDDEN_FRAME.test(name)) frames.push(name);
  }
  return frames;
}

let exitCode;
try {
  const module = await WebAssembly.compile(await readFile(wasmPath));
  const wasi = new WASI({
    version: 'preview1',
    args: [wasmPath, ...guestArgs],
    env: { ...process.env },
    preopens: preopens(),
    returnOnExit: true,
  });
  const instance = await WebAssembly.instantiate(module, {
    ...stubImports(module),
    ...wasi.getImportObject(),
  });
  // start() calls _start and returns the proc_exit code (0 if _start simply returns).
  exitCode = wasi.start(instance) ?? 0;
} catch (err) {
  if (err instanceof WebAssembly.RuntimeError || err instanceof RangeError) {
    const frames = wasmBacktrace(err);
    const panicked = /(^|\n)\s*at \S*(rust_begin_unwind|rust_panic|panic_fmt)/.test(String(err.stack));
    const lines = [
      '',
      `${TAG} ${path.basename(wasmPath)} trapped: ${err.message}` +
        (panicked ? ' (a Rust panic: panic=abort on wasm32-wasip1)' : ''),
      `${TAG} libtest cannot catch this on wasm32-wasip1, so the whole test binary stopped here;`,
      `${TAG} the test that was running is the last "test <name> ... " line without a result.`,
    ];
    if (panicked) {
      lines.push(`${TAG} libtest captured the panic message; rerun that test with --nocapture to see it.`);
    }
    if (frames.length) {
      lines.push(`${TAG} wasm backtrace (innermost first${process.env.WASI_RUN_VERBOSE ? '' : ', std/core frames hidden'}):`);
      for (const f of frames.slice(0, 15)) lines.push(`${TAG}     ${f}`);
      if (frames.length > 15) lines.push(`${TAG}     ... ${frames.length - 15} more`);
    }
    process.stderr.write(`${lines.join('\n')}\n`);
    exitCode = 134; // what a native abort (SIGABRT) reports
  } else {
    process.stderr.write(`${TAG} failed to run ${wasmPath}: ${err?.stack ?? err}\n`);
    exitCode = 127;
  }
}
process.exit(exitCode);
