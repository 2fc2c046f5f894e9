// An empty CommonJS module: what child_process.fork starts in the comparison.
