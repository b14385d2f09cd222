"""The math of both stages as pure functions: tensors (or numbers) in, tensors out; no files, no models, no CLI."""
