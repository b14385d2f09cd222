"""Models in memory: loading models and tokenizers, adapters, the hub, batching and packing, sampling, the optimizer, torchrun."""
