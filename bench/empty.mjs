// An empty ES module: what child_process.fork starts in the comparison.
