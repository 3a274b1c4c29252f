// Last-chance cleanup for when a test run is torn down before its own cleanups ran. vitest ends
// its fork workers with SIGTERM, which skips 'exit' handlers unless someone handles the signal,
// so both are covered. Handlers must be synchronous: nothing can be awaited at exit.

type Sync = () => void;
const stages: [Sync[], Sync[]] = [[], []]; // 0: kill processes, 1: remove files (after their owners are gone)
let installed = false;

function runAll(): void {
  for (const stage of stages) {
    for (const fn of stage.splice(0)) {
      try {
        fn();
      } catch {
        /* best effort */
      }
    }
  }
}

/** Registers a synchronous cleanup; returns a function that unregisters it. */
export function atExit(fn: Sync, stage: 0 | 1 = 1): () => void {
  if (!installed) {
    installed = true;
    process.once('exit', runAll);
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      process.once(sig, () => {
        runAll();
        // Exit as the signal would have, unless someone else also handles it (then it is theirs).
        if (process.listenerCount(sig) === 0) process.exit(sig === 'SIGTERM' ? 143 : 130);
      });
    }
  }
  stages[stage].push(fn);
  return () => {
    const i = stages[stage].indexOf(fn);
    if (i >= 0) stages[stage].splice(i, 1);
  };
}
