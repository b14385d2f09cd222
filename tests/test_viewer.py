"""tispipe.estimate.inspect_weights: the weight colour scale and the per-token texts of `tispipe inspect`."""

from __future__ import annotations

import math
import re

import pytest

from tispipe.estimate.inspect_weights import token_texts, weight_rgb


def test_weight_rgb_white_at_one_green_above_red_below():
    assert weight_rgb(1.0, 0.5) == (255, 255, 255)
    r, g, b = weight_rgb(1.1, 0.5)
    assert g == 255 and r == b < 255
    r, g, b = weight_rgb(0.9, 0.5)
    assert r == 255 and g == b < 255


def test_weight_rgb_grows_with_log_w_and_saturates_at_the_scale():
    scale = 0.5
    assert weight_rgb(math.exp(0.1), scale)[0] > weight_rgb(math.exp(0.3), scale)[0]  # more weight: deeper green
    full_green = weight_rgb(math.exp(scale), scale)
    assert full_green == (64, 255, 64)  # 255 * (1 - 0.75)
    assert weight_rgb(math.exp(3 * scale), scale) == full_green
    full_red = weight_rgb(math.exp(-scale), scale)
    assert full_red == (255, 64, 64)
    assert weight_rgb(math.exp(-3 * scale), scale) == full_red
    assert weight_rgb(0.0, scale) == full_red  # log 0: as low as it gets


def test_token_texts_without_a_tokenizer_are_ids():
    assert token_texts(None, [5, 17, 0]) == ["[5]", "[17]", "[0]"]
    assert token_texts(None, []) == []


@pytest.mark.parametrize("text", ["how can I bake bread?", "the oven héat, 4.5 minutes ✓"])
def test_token_texts_join_back_to_the_decoded_text(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    pieces = token_texts(tiny_tokenizer, ids)
    assert len(pieces) == len(ids) > 3
    assert "".join(pieces) == tiny_tokenizer.decode(ids) == text
    assert "\ufffd" not in "".join(pieces)
    if not text.isascii():  # a character split over tokens shows up whole with its last token
        assert "" in pieces


def test_a_shard_folder_moved_away_from_its_base_model_still_reads_as_text(tmp_path, make_tiny_llama):
    import shutil

    from conftest import invoke_cli, prompt_estimate

    prompt_estimate(tmp_path, make_tiny_llama)
    moved = tmp_path / "elsewhere" / "weights"
    shutil.move(tmp_path / "weights", moved)
    shutil.rmtree(tmp_path / "base")  # the manifest's model path leads nowhere now
    result = invoke_cli("inspect", moved, "--html", tmp_path / "page.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "page.html").read_text()
    assert "Note:" not in result.output, result.output
    assert "&lt;|endoftext|&gt;" in page and not re.search(r">\[\d+\]<", page)  # tokens decoded by the folder's own copy

    shutil.rmtree(moved / "tokenizer")  # a folder written before the copy existed, read where its base is gone
    result = invoke_cli("inspect", moved)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("Note:")]
    assert len(notes) == 1 and "tokens are shown as ids: no tokenizer loads here" in notes[0], result.output


def _row(side, ids, weights, logratio, labels):
    return {f"{side}_ids": ids, f"{side}_weights": weights, f"{side}_logratio": logratio, f"{side}_labels": labels}


def test_top_tokens_counts_the_most_weighted_share_by_label_and_names_the_unlabelled_ones():
    from tispipe.estimate.top_tokens import top_tokens

    rows = [_row("chosen", [7, 8, 9, 10], [3.0, 1.0, 0.5, 2.0], [1.1, 0.0, -0.7, 0.7], [1, 0, 0, 0]),
            _row("chosen", [11, 12], [2.5, 0.9], [0.9, -0.1], [0, -1])]
    top = top_tokens("chosen", rows, 0.5)  # 3 of 6 tokens: weights 3.0 (helpful), 2.5 (first of its row), 2.0
    assert (top.tokens, top.top, top.decisive, top.opposite, top.unlabelled, top.unlabelled_first) == (6, 3, 1, 0, 2, 1)
    assert top.unlabelled_ids == {11: 1, 10: 1}
    everything = top_tokens("chosen", rows, 1.0)
    assert (everything.decisive, everything.opposite, everything.unlabelled) == (1, 1, 4)


def test_top_tokens_break_ties_at_the_clamp_by_the_sides_log_ratio():
    from tispipe.estimate.top_tokens import top_tokens

    # every rejected weight at the clamp's bound: the most negative r_t ranks first (Eq. 19 before the clamp)
    rows = [_row("rejected", [1, 2, 3, 4], [1.65] * 4, [-3.0, -0.6, -1.0, -0.7], [0, -1, 0, -1])]
    assert top_tokens("rejected", rows, 0.25).unlabelled_ids == {1: 1}
    two = top_tokens("rejected", rows, 0.5)
    assert (two.decisive, two.unlabelled, two.unlabelled_ids) == (0, 2, {1: 1, 3: 1})
    assert top_tokens("rejected", rows, 0.75).decisive == 1


def test_top_tokens_without_labels_count_everything_as_unlabelled():
    from tispipe.estimate.top_tokens import top_tokens

    top = top_tokens("chosen", [_row("chosen", [5, 6], [1.2, 0.8], [0.2, -0.2], None)], 0.5)
    assert (top.decisive, top.opposite, top.unlabelled, top.unlabelled_ids) == (None, None, 1, {5: 1})


def test_inspect_top_tokens_prints_both_sides_and_refuses_a_share_above_one(tmp_path, make_tiny_llama):
    from conftest import invoke_cli, prompt_estimate

    prompt_estimate(tmp_path, make_tiny_llama)
    result = invoke_cli("inspect", tmp_path / "weights", "--top-tokens", "0.2")
    assert result.exit_code == 0, result.output
    assert "tokens with the highest weights" in result.output and "Commonest unlabelled, rejected:" in result.output
    result = invoke_cli("inspect", tmp_path / "weights", "--top-tokens", "1.5")
    assert result.exit_code == 1 and "--top-tokens" in result.output.splitlines()[0], result.output
