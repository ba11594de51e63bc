"""The one training loop (loop) and the run folder it writes (run), behind the warmup and train stages."""
