"""The offline default on the Llama-family architectures: `configs/mock_sentiment.py:
runlocal,arch=llama|qwen2|qwen3`, every stage in-process on tiny shapes.

Each family also takes a different slice of the switches, so together the
three runs cover the shared and the separate value model (from the reward
model), the linear, scalar-mix and selector heads, PPO and GRPO, span marks
with a token-level RM's dense rewards and likelihood/unlikelihood, the
held-out judge, and DPO and best-of-N SFT beside them; the exported policy must load in transformers'
`AutoModelForCausalLM` with the same logits. This checks that every stage
runs on these architectures, not what they learn at these sizes.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_jax import memory, pipeline
from rlhf_jax.config_check import resolve
from rlhf_jax.models import DecoderConfig, load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shrinks of runlocal: a small corpus and pretraining, few steps everywhere.
OVERRIDES = {
    "pretrain.num_docs": 300,
    "pretrain.epochs": 1,
    "pretrain.num_val": 16,
    "labels.num_train": 32,
    "labels.num_val": 16,
    "reward.normalize_samples": 16,
    "ppo.total_episodes": 64,
    "eval.num_queries": 32,
    "eval.best_of_n": (1, 2),
    "bon_sft.num_queries": 16,
    "bon_sft.batch_size": 16,
}
CASES = {
    "llama": "value=shared,head=linear,token_rm=on,judge=on",
    "qwen2": "value=separate,head=scalar_mix",
    "qwen3": "algo=grpo,head=selector",
}
EXTRA_STAGES = {"llama": ",ul", "qwen2": ",dpo,bon_sft"}


def _config(arch: str):
    spec = importlib.util.spec_from_file_location(
        "mock_sentiment_config", os.path.join(ROOT, "configs", "mock_sentiment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(f"runlocal,arch={arch},{CASES[arch]}")
    # figures only reads the workdir: the same for every architecture.
    cfg.stages = cfg.stages.replace(",figures", "") + EXTRA_STAGES.get(arch, "")
    for dotted, value in OVERRIDES.items():
        group, name = dotted.split(".")
        cfg[group][name] = value
    cfg.lock()
    return cfg


@pytest.mark.parametrize("arch", sorted(CASES))
def test_every_stage_runs_on_the_architecture(arch, tmp_path):
    # Each family in a fresh process: inside a long-lived test worker, after
    # other tests, jaxlib 0.10.2 crashed (SIGSEGV, SIGABRT) compiling or
    # (de)serialising one of these runs' programs, in four suite runs of four;
    # alone, and in `launch.py` runs of the full default, it does not
    # (docs/reliability.md).
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), arch, str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def run_case(arch: str, tmp_path) -> None:
    cfg = _config(arch)
    resolve(cfg, 1)
    # The memory report (--dry_run) sizes the same architecture.
    report = memory.report(cfg, 1)
    assert f"model.arch={arch}" in report.arch and report.kv_cache > 0

    results = pipeline.run(cfg, str(tmp_path))
    want = {"pretrain", "labels", "reward", "ppo", "eval"} | set(
        EXTRA_STAGES.get(arch, "").split(",")[1:])
    assert want <= set(results), sorted(results)
    if arch == "qwen3":  # GRPO: no value model, group-normalised advantages
        assert "ppo/loss/value" not in results["ppo"] and "ppo/loss/policy" in results["ppo"]
    if arch == "llama":  # span marks, a token-level RM's dense rewards, the held-out judge
        assert "objective/token_reward" in results["ppo"]
        assert "unlikelihood" in results["ul"]["train"]
    with open(tmp_path / "eval.json") as f:
        evaluation = json.load(f)
    assert evaluation  # every policy scored
    if arch == "llama":
        assert "judge_winrate" in evaluation["ppo"] and "ul" in evaluation
    with open(tmp_path / "models" / "reward" / "reward_config.json") as f:
        assert json.load(f)["trunk"]["model_type"] == arch

    # The exported policy: our loader and transformers agree on it.
    path = str(tmp_path / "models" / "policy")
    model, params = load_pretrained(path)
    assert isinstance(model.config, DecoderConfig) and model.config.family == arch
    theirs = AutoModelForCausalLM.from_pretrained(path).eval()
    ids_1xT = np.array([[5, 17, 301, 42, 13, 7]], np.int32)
    with torch.no_grad():
        want = theirs(torch.from_numpy(ids_1xT).long()).logits.numpy()
    got = model.apply({"params": params}, jnp.asarray(ids_1xT),
                      attention_mask=jnp.ones_like(ids_1xT)).logits
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


if __name__ == "__main__":  # one family's run, in the process the test starts
    run_case(sys.argv[1], pathlib.Path(sys.argv[2]))
