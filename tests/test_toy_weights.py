"""The method's effect on the shipped task, end to end at small scale: on toy pairs, the weights of the
DPO-built contrastive models single out the ground-truth decisive tokens (paper Sec. 6: TIS-DPO(D)).

This is the one test that checks the weights *mean* something, not only that they follow the formula.
"""

import json

import pytest

from tispipe.configs import EstimateConfig, InitBaseConfig
from tispipe.data import toy
from tispipe.estimate.estimate import run as estimate
from tispipe.prepare.init_base import run as init_base


@pytest.mark.slow  # trains a base model and the DPO contrastive pair (about 16 s)
def test_dpo_weights_find_the_decisive_tokens(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(toy.to_jsonl(toy.generate(400, seed=1, split="train")))
    init_base(
        InitBaseConfig(
            data=str(data), out=str(tmp_path / "base"), vocab_size=700, hidden_size=48, num_layers=2, num_heads=4,
            max_length=160, epochs=2.0, batch_size=32, lr=1e-2, threads=1,
        )
    )
    estimate(
        EstimateConfig(
            data=str(data), model=str(tmp_path / "base"), out=str(tmp_path / "weights"), method="dpo",
            contrast_lr=1e-3, contrast_epochs=1.0, contrast_batch_size=16, batch_size=32,
        )
    )
    auc = json.loads((tmp_path / "weights" / "manifest.json").read_text())["auc"]
    # 0.5 is chance. On the full toy set with runs/base this AUC is 0.80 (README); here, with a base
    # trained for seconds, a clear margin above chance is what the method must still show.
    assert auc["rejected_harmful_by_high_weight"] > 0.65, auc
    assert auc["chosen_helpful_by_high_weight"] > 0.65, auc
