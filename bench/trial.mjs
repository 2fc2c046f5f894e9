// A benchmark file that runs each trial in a fresh process is its own trial
// runner: `node x.bench.mjs --trial <key> <n>` runs one trial and prints
// {"value"}; without --trial the file runs its main().
export async function trialOrMain(trial, main) {
  if (process.argv[2] === '--trial') {
    const value = await trial(process.argv[3], Number(process.argv[4]));
    console.log(JSON.stringify({ value }));
    process.exit(0);
  }
  await main();
}
