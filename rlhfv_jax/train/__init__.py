"""Training: the train step (pmap and FSDP mesh), objectives, optimizer, checkpoints,
metrics, the train loop and multi-host set-up."""
