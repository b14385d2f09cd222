"""What the stages write and read back: shards and manifest, checkpoints, atomic files, where a command may write, metric logs, trackers, figures, weight statistics."""
