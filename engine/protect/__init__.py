"""Protection pipeline: one method over a data set (run, engine, handlers, settings, run store, results, shards)."""
