"""Training infrastructure: config validation, optimizer, train step (pmap and FSDP mesh),
checkpoints, metrics, the train loop and multi-host set-up."""
