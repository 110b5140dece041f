"""The offline default on GPT-2, Llama 3 and Qwen3 architectures, five seeds each.

    python launch.py --sweep=configs/sweeps/architectures.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/architectures.py:runlocal --workdir=/tmp/sweep_local

Per architecture, `configs/mock_sentiment.py:arch=A` at the default's size
(width 64, 2 layers; the Llama-family models with 2 query heads and one
key/value head) is pretrained once (`apre-<A>`, seed 0, the same corpus and
tokenizer), then each seed draws its own labels, trains its own reward model,
runs PPO and the evaluation from that model (`arch-<A>-s<seed>`). Question:
does the default's effect (RM accuracy, PPO's gold gain at its KL, best-of-N)
carry over to today's architectures, within GPT-2's seed spread? The
aggregation tests each architecture against GPT-2 (`verdicts.md`).
"""

from configs.sweeps import mock_scale
from rlhf_jax.experiments import summary_table
from rlhf_jax.experiments.sweep import (Curve, Figure, Panel, Points, Ref, Run, Sweep,
                                        eval_point, grid, last_metric, seeds_of)

ARCHS = ("gpt2", "llama", "qwen3")
CONFIG = "configs/mock_sentiment.py"


def pretrain_name(arch: str) -> str:
    return f"apre-{arch}"


def run_name(arch: str) -> str:
    return f"arch-{arch}"


def get_sweep(arg=None):
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"sweep argument {arg!r}: expected nothing or 'runlocal'")
    runlocal = arg == "runlocal"
    seeds = (0, 1) if runlocal else (0, 1, 2, 3, 4)
    config = CONFIG + (":runlocal" if runlocal else "")
    tokenizer = Ref(pretrain_name(ARCHS[0]), "tokenizer")
    runs = []
    for i, a in enumerate(ARCHS):
        pre = {"model.arch": a, "stages": "pretrain", "log.tensorboard": False}
        if i:
            pre["model.tokenizer"] = tokenizer
        runs.append(Run(pretrain_name(a), config, pre))
        runs += grid(run_name(a), config, seeds, {
            "model.arch": a, "model.init": "pretrained",
            "model.name_or_path": Ref(pretrain_name(a), "models/pretrained"),
            "model.tokenizer": tokenizer, "stages": "labels,reward,ppo,eval",
            "log.tensorboard": False})

    def per_arch(extract):
        return tuple(Curve(a, (Points(seeds_of(run_name(a), seeds), extract(x)),), line=False)
                     for x, a in enumerate(ARCHS))

    ticks = tuple(enumerate(ARCHS))
    bon = "best_of_16" if not runlocal else "best_of_4"
    panels = (
        Panel("RM held-out accuracy (best of 4; chance 0.25)", "architecture",
              "held-out accuracy", per_arch(lambda x: last_metric(
                  "reward", "reward/val_accuracy", x)), xticks=ticks),
        Panel("PPO after training: held-out gold vs KL", "KL(policy || initial) [nats]",
              "gold score", tuple(Curve(a, (Points(seeds_of(run_name(a), seeds),
                                                   eval_point("ppo", "kl", "gold_score")),),
                                        line=False) for a in ARCHS), xscale="sqrt"),
        Panel(f"{bon.replace('_', '-')} by the RM: held-out gold vs KL",
              "KL(policy || initial) [nats]", "gold score",
              tuple(Curve(a, (Points(seeds_of(run_name(a), seeds),
                                     eval_point(bon, "kl", "gold_score")),), line=False)
                    for a in ARCHS), xscale="sqrt"),
    )
    caption = (mock_scale.GOLD + " One pretrained model per architecture; seeds change "
               "labels, reward model, PPO and evaluation.")
    return Sweep("architectures", tuple(runs),
                 (Figure("architectures", "The offline default on three architectures",
                         panels, caption=caption),), runlocal=runlocal,
                 # Each architecture against GPT-2 on every panel (verdicts.md).
                 tables=(summary_table.arch_verdicts,))
