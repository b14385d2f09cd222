"""The commands that make a stage's inputs: init-base (a tiny base model), convert-gguf (a GGUF file into a model folder), generate (pairs from a model)."""
