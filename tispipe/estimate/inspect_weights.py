"""`tispipe inspect DIR`: look at the token weights of an estimate run (the paper's weight visualisation).

The terminal view colours one pair's tokens by weight; `--html FILE` writes a standalone page of
many pairs, chosen and rejected side by side, each token a span with its r_t and w_t in a tooltip.
Colour is log(w) on a diverging scale: green above 1 (the token counts more), red below 1, white at 1.
Where the data has ground-truth token labels they are underlined (green helpful, red harmful).
"""

from __future__ import annotations

import html as html_lib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tispipe.configs import InspectConfig, check_options
from tispipe.errors import TispipeError

COLUMNS = ["pair_id", "prompt", "chosen_ids", "rejected_ids", "chosen_logratio", "rejected_logratio", "chosen_weights", "rejected_weights", "chosen_labels", "rejected_labels"]


def run(cfg: InspectConfig) -> None:
    from tispipe.artifacts.shards import read_manifest, verify_shards
    from tispipe.console import log_console, result_console

    check_options(cfg, non_negative=("pair",), at_least_one=("html_pairs",))
    if cfg.html:
        from tispipe.artifacts.atomic import check_writable

        if Path(cfg.html).is_dir():
            raise TispipeError(f"--html {cfg.html} is a folder, not a file")
        check_writable(Path(cfg.html).parent, "--html")
    manifest = read_manifest(cfg.folder)
    verify_shards(cfg.folder, manifest)
    total = sum(entry["rows"] for entry in manifest["shards"])
    if cfg.pair >= total:
        raise TispipeError(f"--pair {cfg.pair} is out of range: {cfg.folder} holds {total} pairs (0..{total - 1})")
    tokenizer = _tokenizer(Path(cfg.folder), manifest)
    vocab_size = len(tokenizer) if tokenizer is not None else None
    rows = list(read_rows(Path(cfg.folder), manifest, cfg.pair, cfg.html_pairs if cfg.html else 1, vocab_size))
    scale = _scale(manifest)
    show_pair(rows[0], tokenizer, scale, result_console())
    if cfg.html:
        page = html_page(rows, tokenizer, scale, manifest)
        from tispipe.artifacts.atomic import atomic_write_text

        atomic_write_text(cfg.html, page)
        log_console().print(f"Wrote {len(rows)} pairs to {cfg.html}")
    if cfg.top_tokens:
        show_top_tokens(read_rows(Path(cfg.folder), manifest, 0, total, vocab_size), cfg.top_tokens, tokenizer, result_console())


def read_rows(folder: Path, manifest: dict[str, Any], start: int, count: int, vocab_size: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows start .. start+count-1 in data order, reading only the shards that hold them (ids below `vocab_size`)."""
    from tispipe.artifacts.shards import iter_shard_rows, shard_paths

    offset = 0
    for path, entry in zip(shard_paths(folder, manifest), manifest["shards"], strict=True):
        end = offset + entry["rows"]
        if end > start and offset < start + count:
            for index, row in enumerate(iter_shard_rows(path, COLUMNS, entry["rows"], vocab_size=vocab_size), start=offset):
                if start <= index < start + count:
                    yield row
        offset = end


def _tokenizer(folder: Path, manifest: dict[str, Any]):
    """The tokenizer copy in FOLDER/tokenizer (estimate writes it), else the base model's; None, said in one
    line, when neither loads here (tokens are then shown as ids)."""
    from tispipe.console import log_console
    from tispipe.modeling.models import load_tokenizer

    settings = manifest.get("settings") or {}
    copy = folder / "tokenizer"
    source = str(copy) if copy.is_dir() else settings.get("model")
    try:
        if source is None:
            raise TispipeError("the manifest names no model")
        return load_tokenizer(source, settings.get("trust_remote_code", False))
    except (TispipeError, OSError) as e:
        reason = e.message if isinstance(e, TispipeError) else str(e)
        log_console().print(f"[yellow]Note:[/yellow] tokens are shown as ids: no tokenizer loads here ({reason})", soft_wrap=True, highlight=False)
        return None


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text: the growth of the decoded prefix, so multi-byte characters split across tokens stay readable."""
    if tokenizer is None:
        return [f"[{i}]" for i in ids]
    pieces, previous = [], ""
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n], skip_special_tokens=False)
        if text.startswith(previous) and "\ufffd" not in text[len(previous) :]:
            pieces.append(text[len(previous) :])
            previous = text
        else:
            pieces.append("")  # an incomplete character: it appears with the next token
    return pieces


def _scale(manifest: dict[str, Any]) -> float:
    """|log w| that gets the full colour: the 5%/95% weight quantiles over both sides (at least 0.05)."""
    bound = 0.05
    for side in ("chosen", "rejected"):
        quantiles = manifest.get("weights", {}).get(side, {}).get("quantiles", {})
        for q in ("0.05", "0.95"):
            if quantiles.get(q, 0) > 0:
                bound = max(bound, abs(math.log(quantiles[q])))
    return bound


def weight_rgb(weight: float, scale: float) -> tuple[int, int, int]:
    """Diverging colour of log(w): white at w = 1, green above, red below, full at |log w| = scale."""
    x = max(-1.0, min(1.0, math.log(weight) / scale)) if weight > 0 else -1.0
    fade = int(round(255 * (1 - abs(x) * 0.75)))
    return (fade, 255, fade) if x >= 0 else (255, fade, fade)


def show_pair(row: dict[str, Any], tokenizer, scale: float, console) -> None:
    from rich.text import Text

    console.print(f"[bold]pair {row['pair_id']}[/bold]  [dim](green: weight > 1, red: weight < 1; underlined: labelled tokens)[/dim]")
    console.print(Text(row["prompt"], style="dim"))
    for side in ("chosen", "rejected"):
        text = Text(f"{side}: ", style="bold")
        labels = row.get(f"{side}_labels") or [0] * len(row[f"{side}_ids"])
        for piece, weight, label in zip(token_texts(tokenizer, row[f"{side}_ids"]), row[f"{side}_weights"], labels, strict=True):
            r, g, b = weight_rgb(weight, scale)
            style = f"black on rgb({r},{g},{b})" + (" underline" if label else "")
            text.append(piece.replace("\n", "⏎\n"), style=style)
        console.print(text)
        weights = row[f"{side}_weights"]
        console.print(f"  [dim]{len(weights)} tokens, weight min {min(weights):.3f} mean {sum(weights) / len(weights):.3f} max {max(weights):.3f}[/dim]")


def show_top_tokens(rows: Iterator[dict[str, Any]], share: float, tokenizer, console) -> None:
    """`--top-tokens`: per side, what the highest weights land on (tispipe.estimate.top_tokens)."""
    from rich.table import Table

    from tispipe.artifacts.weight_quality import DECISIVE_NAME, OPPOSITE_NAME
    from tispipe.estimate.top_tokens import top_tokens

    rows = list(rows)
    tops = {side: top_tokens(side, rows, share) for side in ("chosen", "rejected")}
    console.print(f"[bold]The {share * 100:g}% of each side's tokens with the highest weights[/bold]", highlight=False)
    table = Table()
    table.add_column("")
    for side in tops:
        table.add_column(side, justify="right")
    labelled = lambda count, name: "-" if count is None else f"{count} {name}"  # noqa: E731
    table.add_row("tokens", *(str(t.tokens) for t in tops.values()))
    table.add_row("counted", *(str(t.top) for t in tops.values()))
    table.add_row("labelled decisive", *(labelled(t.decisive, DECISIVE_NAME[side]) for side, t in tops.items()))
    table.add_row("labelled opposite", *(labelled(t.opposite, OPPOSITE_NAME[side]) for side, t in tops.items()))
    table.add_row("unlabelled", *(str(t.unlabelled) for t in tops.values()))
    table.add_row("  a response's first", *(str(t.unlabelled_first) for t in tops.values()))
    console.print(table)
    for side, top in tops.items():
        common = ", ".join(f"{token_texts(tokenizer, [token])[0]!r} {count}" for token, count in top.unlabelled_ids.most_common(8))
        console.print(f"Commonest unlabelled, {side}: {common or '-'}", soft_wrap=False, highlight=False)


def _side_html(row: dict[str, Any], side: str, tokenizer, scale: float) -> str:
    labels = row.get(f"{side}_labels") or [0] * len(row[f"{side}_ids"])
    spans = []
    for piece, r_t, w_t, label in zip(token_texts(tokenizer, row[f"{side}_ids"]), row[f"{side}_logratio"], row[f"{side}_weights"], labels, strict=True):
        red, green, blue = weight_rgb(w_t, scale)
        mark = {1: " helpful", -1: " harmful"}.get(label, "")
        spans.append(
            f'<span class="t{mark}" style="background:rgb({red},{green},{blue})" title="r_t = {r_t:.4f}&#10;w_t = {w_t:.4f}{mark}">'
            f"{html_lib.escape(piece) or '&#8203;'}</span>"
        )
    weights = row[f"{side}_weights"]
    note = f'<div class="range">w {min(weights):.3f} to {max(weights):.3f}, mean {sum(weights) / len(weights):.3f}, {len(weights)} tokens</div>'
    return "".join(spans) + note


def _legend(scale: float) -> str:
    """The colour scale as swatches from w = exp(-scale) through 1 to exp(scale)."""
    stops = [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    cells = []
    for x in stops:
        w = math.exp(x * scale)
        red, green, blue = weight_rgb(w, scale)
        cells.append(f'<span class="swatch" style="background:rgb({red},{green},{blue})">w = {w:.2f}</span>')
    return '<div class="legend">' + "".join(cells) + ' <span class="helpful">helpful</span> <span class="harmful">harmful</span></div>'


def html_page(rows: list[dict[str, Any]], tokenizer, scale: float, manifest: dict[str, Any]) -> str:
    settings = manifest.get("settings", {})
    title = f"tispipe token weights ({manifest.get('method', '?')}, transform {settings.get('transform', '?')})"
    body = []
    for row in rows:
        body.append(
            f'<tr><td colspan="2" class="prompt"><b>{html_lib.escape(str(row["pair_id"]))}</b> {html_lib.escape(row["prompt"])}</td></tr>'
            f'<tr><td>{_side_html(row, "chosen", tokenizer, scale)}</td><td>{_side_html(row, "rejected", tokenizer, scale)}</td></tr>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html_lib.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
td {{ vertical-align: top; padding: 0.4em 0.6em; border-bottom: 1px solid #ddd; font-family: monospace; white-space: pre-wrap; word-wrap: break-word; }}
td.prompt {{ background: #f4f4f4; font-family: sans-serif; white-space: normal; }}
th {{ text-align: left; padding: 0.4em 0.6em; }}
.t {{ color: #000; }}
.helpful {{ text-decoration: underline 2px green; }}
.harmful {{ text-decoration: underline 2px red; }}
.range {{ color: #666; font-family: sans-serif; font-size: 0.8em; margin-top: 0.3em; }}
.legend {{ margin: 0.5em 0 1em 0; }}
.swatch {{ display: inline-block; padding: 0.2em 0.6em; border: 1px solid #ccc; font-family: monospace; font-size: 0.85em; }}
</style></head><body>
<h1>{html_lib.escape(title)}</h1>
{_legend(scale)}
<p>Background: log(w_t) on a diverging scale, green for w &gt; 1, red for w &lt; 1, full colour at |log w| = {scale:.2f}.
Hover a token for r_t = log &pi;<sup>+</sup> &minus; log &pi;<sup>&minus;</sup> and w_t. Underlined: ground-truth labels (green helpful, red harmful).</p>
<table><tr><th>chosen</th><th>rejected</th></tr>
{"".join(body)}
</table></body></html>
"""
