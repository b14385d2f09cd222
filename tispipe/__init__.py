"""tispipe: token-level importance-sampling DPO (TIS-DPO) as a two-stage pipeline."""

__version__ = "0.1.0"
