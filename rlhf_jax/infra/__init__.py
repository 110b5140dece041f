"""What every stage runs on: data parallelism and FSDP, checkpoints, metrics,
durable files, the compilation cache and the memory report."""
