"""Warnings about weights that cannot do what TIS-DPO needs of them, read from an estimate's manifest.

Eq. 19, w_t = k * exp(mu * clamp(r_t, L, U)), carries a token's importance in where r_t falls inside the
clamp window [L, U]. Two failures of the contrastive pair make the weights carry little of it, and both
were seen on a real model (docs/weights.md gives the figures):

- **saturated**: pi+ and pi- are so far apart that r_t mostly falls outside the window, so most tokens of
  a side share one of its two bound weights and their order inside each group is lost (a dpo contrast
  trained to a loss of 0.03 put 92% of its rejected tokens at the bound);
- **flat**: pi+ and pi- hardly differ, so r_t spreads a few hundredths of a nat and every weight is
  about k: TIS-DPO then trains as DPO does (the contrastive prompts on SmolLM2 gave r a std of 0.06).

Both are judged per side from the manifest's `weights` (shares at the min and max) and `logratio` (std)
summaries; transforms without a clamp (top, rank) are two-valued or spread by design and are not judged.
"""

from __future__ import annotations

from typing import Any

SATURATED_SHARE = 0.5  # a side with more than this share of its tokens at one of its two bound weights
FLAT_LOGRATIO_STD = 0.1  # nats: weights then vary by about 10% around k (exp(0.1) = 1.105)
CLAMPED = ("exp", "calibrated", "linear")
UNSCALED = ("exp", "linear")  # calibrated divides r by its std, so a narrow r is widened first


def weight_warnings(manifest: dict[str, Any]) -> list[str]:
    """Each problem of the manifest's weights as one sentence (empty when none is found)."""
    settings = manifest.get("settings") or {}
    transform = settings.get("transform", "exp")
    weights, logratio = manifest.get("weights") or {}, manifest.get("logratio") or {}
    sides = [s for s in ("chosen", "rejected") if (weights.get(s) or {}).get("count")]
    warnings = []
    if transform in CLAMPED:
        shares = {s: weights[s].get("at_min", 0.0) + weights[s].get("at_max", 0.0) for s in sides}
        saturated = {s: share for s, share in shares.items() if share > SATURATED_SHARE}
        if saturated:
            stds = ", ".join(f"{s} {logratio[s]['std']:.2f}" for s in saturated if "std" in logratio.get(s, {}))
            warnings.append(
                " and ".join(f"{share:.0%} of the {s} tokens" for s, share in saturated.items())
                + f" have a weight at a clamp bound (r_t outside [{settings.get('lower')}, {settings.get('upper')}]; std of r: {stds} nats), "
                "so most weights are one of two values: pi+ and pi- are far apart. A gentler contrast (a smaller --contrast-lr "
                "or fewer --contrast-epochs), or --transform calibrated (here, or in train from the stored r), keeps the tokens' order."
            )
    if transform in UNSCALED and sides and all(logratio.get(s, {}).get("std", 1.0) < FLAT_LOGRATIO_STD for s in sides):
        stds = " / ".join(f"{logratio[s]['std']:.3f}" for s in sides)
        remedy = ("a contrast trained on the pairs (--method sft or dpo)" if manifest.get("method") == "prompt"
                  else "a longer build (a larger --contrast-lr, more --contrast-epochs or more pairs)")
        warnings.append(
            f"r_t hardly varies (std {stds} nats, {' / '.join(sides)}), so every weight is close to k and TIS-DPO will train "
            f"about as DPO does: pi+ and pi- barely differ; {remedy} separates them more."
        )
    return warnings
