"""Stiennon's summarisation evaluation: preference against references, the length-controlled
preference, copying measures, and one `:runlocal` run of configs/world_tldr.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rlhf_jax.stages import summary_eval as se

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORY = ("Anna found a red box in the garden. Yesterday, the baker cleaned the kitchen. "
         "On Monday, Anna won a lovely cake at the market. She felt hungry after dinner. "
         "In the end, Anna felt happy.")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_preference_counts_ties_as_half():
    np.testing.assert_array_equal(se.preference([3.0, 1.0, 2.0], [2.0, 2.0, 2.0]), [1, 0, 0.5])


def test_noisy_preference_is_boltzmann():
    rng = np.random.default_rng(0)
    # A gap of 1 at temperature 1.5: chosen with probability sigmoid(2/3) = 0.6608.
    p = se.noisy_preference(np.ones(100_000), np.zeros(100_000), 1.5, rng)
    assert abs(p.mean() - 0.6608) < 0.005
    assert se.noisy_preference([100.0], [0.0], 1.5, rng)[0] == 1.0
    ties = se.noisy_preference(np.zeros(10_000), np.zeros(10_000), 0.0, rng)
    assert abs(ties.mean() - 0.5) < 0.02


def test_logistic_regression_recovers_an_intercept():
    # One intercept, 3 wins in 4: w = logit(0.75) = ln 3.
    w = se.logistic_regression(np.ones((4, 1)), [1, 1, 1, 0])
    assert w[0] == pytest.approx(np.log(3.0), abs=1e-5)


def test_length_controlled_preference_reads_the_fit_at_equal_length():
    # Soft labels exactly the model's probabilities, intercepts (0, ln 3) and
    # slope 1: the fit returns them. Policy 0 wins 61.6% raw only because its
    # summaries are longer (log ratio 0 and 1); at equal length it wins 50%.
    x = np.array([0.0, 1.0, 0.0, -1.0])
    policy = np.array([0, 0, 1, 1])
    y = _sigmoid(np.array([0.0, 1.0, np.log(3.0), np.log(3.0) - 1.0]))
    assert y[:2].mean() == pytest.approx(0.6155, abs=1e-4)
    pref, slope = se.length_controlled(y, policy, x, 2)
    np.testing.assert_allclose(pref, [0.5, 0.75], atol=1e-5)
    assert slope == pytest.approx(1.0, abs=1e-5)


def test_sentence_novelty():
    # One of two sentences is copied (capitals and the article ignored).
    assert se.sentence_novelty("In the end, Anna felt happy. Anna was happy.", STORY) == 0.5
    assert se.sentence_novelty("Anna was happy after she won a lovely cake.", STORY) == 1.0
    assert se.sentence_novelty(STORY, STORY) == 0.0
    assert np.isnan(se.sentence_novelty("", STORY))


def test_lcs_and_bigram_lcs():
    assert se.lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook pair: BCBA
    assert se.lcs_length([], "abc") == 0
    # Bigrams (anna won) (won a) (a cake); the story has anna-won, won-a, then
    # a-lovely: 2 of 3 in order.
    assert se.bigram_lcs("Anna won a cake.", STORY) == pytest.approx(2 / 3)
    assert se.bigram_lcs(STORY, STORY) == 1.0
    assert np.isnan(se.bigram_lcs("Anna.", STORY))


def test_compare_on_hand_worked_metrics():
    ref = {"gold": np.array([2.0, 2.0, 2.0, 2.0]), "accuracy": np.zeros(4),
           "facts": np.array([2.0, 3.0, 2.0, 5.0]),
           "words": np.array([10.0, 10.0, 10.0, 10.0]), "novelty": np.array([1, 0, 1, 1.0]),
           "lcs": np.array([0.5, 1, 0.5, 0.5])}
    a = dict(ref, gold=np.array([3.0, 1.0, 2.0, 4.0]), words=np.array([10.0, 20, 5, 10]),
             novelty=np.array([1.0, np.nan, 0.0, 1.0]), rm=np.array([1.0, 2, 3, 4]))
    out = se.compare({"a": a}, ref, noise=0.0, seed=0)
    # Wins, loss, tie, win: (1 + 0 + 0.5 + 1) / 4.
    assert out["a"]["gold_pref"] == 0.625
    assert out["a"]["novelty"] == pytest.approx(2 / 3)  # the summary without sentences is left out
    assert out["a"]["words"] == 11.25 and out["a"]["rm_score"] == 2.5
    assert out["reference"]["gold_score"] == 2.0 and out["reference"]["novelty"] == 0.75
    assert out["a"]["facts_score"] == out["reference"]["facts_score"] == 3.0
    # Noise 0: the labeller agrees with the gold except on the tie (a coin).
    assert out["a"]["labeller_pref"] in (0.5, 0.75)
    assert 0 < out["a"]["length_controlled_pref"] < 1


def test_world_sweeps_runlocal_end_to_end(tmp_path):
    """The five summarisation sweeps at `:runlocal` in one workdir (their shared
    runs trained once): every stage of configs/world_tldr.py:runlocal, the
    summarisation block, and each sweep's figures."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    for sweep in ("world_fig1", "world_copying", "world_copying_skim", "world_copying_lead",
                  "world_overopt"):
        out = subprocess.run([sys.executable, "launch.py",
                              f"--sweep=configs/sweeps/{sweep}.py:runlocal",
                              f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        pngs = [f for f in os.listdir(tmp_path / sweep) if f.endswith(".png")]
        csvs = [f for f in os.listdir(tmp_path / sweep) if f.endswith(".csv")]
        assert pngs and len(csvs) == len(pngs), (sweep, sorted(os.listdir(tmp_path / sweep)))
    # world_fig1's tests over seeds: every claim at both sizes, Holm-adjusted.
    with open(tmp_path / "world_fig1" / "verdicts.json") as f:
        tests = json.load(f)["tests"]
    assert len(tests) == 2 * 4 + 1 and all(t["n"] == 2 and 0 <= t["p_holm"] <= 1 for t in tests)
    with open(tmp_path / "world_copying" / "verdicts.json") as f:
        copying = json.load(f)
    assert len(copying["tests"]) == 7 and isinstance(copying["smart_copier"], bool)
    with open(tmp_path / "world_copying_skim" / "verdicts.json") as f:
        skim = json.load(f)
    assert [t["claim"] for t in skim["tests"]][0] == "skim judge: HF novelty below SFT's"
    assert isinstance(skim["smart_copier"], bool)
    with open(tmp_path / "world_copying_lead" / "verdicts.json") as f:
        lead = json.load(f)
    assert [t["claim"] for t in lead["tests"]][0] == "skim judge: HF novelty below SFT's"
    with open(tmp_path / "runs" / "wtldr-w16-lead-b0.05-skim-s0" / "config.json") as f:
        assert json.load(f)["task"]["story_lead"] is True
    # world_overopt's ladder SFT, beta 0.5, 0.2, 0: three claims and three RM steps.
    with open(tmp_path / "world_overopt" / "verdicts.json") as f:
        overopt = json.load(f)
    assert [m["setting"] for m in overopt["means"]][0] == "SFT" and len(overopt["means"]) == 4
    assert len(overopt["tests"]) == 6 and isinstance(overopt["overoptimisation_shown"], bool)
    run = tmp_path / "runs" / "wtldr-w16-s0"
    with open(run / "eval.json") as f:
        block = json.load(f)["summarization"]
    assert set(block) == {"pretrained", "sft", "hf", "best_of_2", "reference", "length_slope"}
    for name in ("pretrained", "sft", "hf", "best_of_2"):
        r = block[name]
        assert 0 <= r["gold_pref"] <= 1 and 0 <= r["labeller_pref"] <= 1
        assert 0 <= r["length_controlled_pref"] <= 1 and r["n"] == 16
        assert "rm_score" in r and "facts_score" in r
    # The references score about 0 under the bias-normalised RM (a 16-sample bias).
    assert abs(block["reference"]["rm_score"]) < 0.5
    with open(run / "samples.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 16
    assert {"story", "reference", "sft", "hf", "pretrained"} <= set(rows[0])
    assert "TL;DR" not in rows[0]["story"]
    with open(run / "stages" / "labels.json") as f:
        labels = json.load(f)
    # Half the comparisons hold the story's reference (labels.reference_share).
    assert "gold_best_agreement" in labels and 0 < labels["reference_records"] < 32
    assert 0 <= labels["reference_preferred"] <= 1
    # Seeds share the size's SFT model (world_scale: one SFT model per size).
    for seed in (0, 1):
        with open(tmp_path / "runs" / f"wtldr-w16-s{seed}" / "models" / "sft" /
                  "model.safetensors", "rb") as f, open(
                tmp_path / "runs" / "wsft-w16" / "models" / "sft" / "model.safetensors",
                "rb") as g:
            assert f.read() == g.read()


def test_parameter_count_matches_the_model():
    import jax
    import jax.numpy as jnp

    from rlhf_jax.models import GPT2LMHeadModel
    from rlhf_jax.models.gpt2 import GPT2Config

    cfg = GPT2Config(vocab_size=101, n_positions=40, n_embd=16, n_layer=2, n_head=2)
    shapes = jax.eval_shape(lambda: GPT2LMHeadModel(cfg).init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    # 101 * 16 + 40 * 16 + 2 * (12 * 256 + 13 * 16) + 2 * 16 = 8,848.
    assert count == se.parameter_count(16, 2, 40, 101) == 8848


def test_world_tldr_switches():
    import importlib.util

    spec = importlib.util.spec_from_file_location("world_tldr_cfg",
                                                  os.path.join(ROOT, "configs", "world_tldr.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("size=s,judge=accuracy,seed=3")
    assert (c.model.n_embd, c.model.n_layer, c.labels.gold, c.seed) == (32, 2,
                                                                        "summary_accuracy", 3)
    assert module.get_config().labels.gold == "summary"
    assert module.get_config("judge=facts").labels.gold == "summary_facts"
    assert module.get_config("judge=skim").labels.gold == "summary_skim"
    assert module.get_config("size=l").model.n_embd == 128
    with pytest.raises(ValueError, match="size=q"):
        module.get_config("size=q")
