"""Which parts of RLHF were necessary? Methods with and without them, at one label budget.

    python launch.py --sweep=configs/sweeps/study.py --workdir=runs/sweeps
    python launch.py --sweep=configs/sweeps/study.py:runlocal --workdir=/tmp/study_local   # CI
    python launch.py --sweep=configs/sweeps/study.py --workdir=runs/sweeps --dry_run       # the plan

Every method sees the same N labels (the sweep scale's largest pool size,
`mock_scale`) and starts from the same pretrained model; 5 seeds each.

- best-of-N (the RM ranks N samples of the initial policy; KL analytic);
- PPO against the RM with a shared value head (Ziegler) or a separate value
  model initialised from the RM (Stiennon);
- RLOO (k samples per query, leave-one-out baseline) and REINFORCE with a
  moving-average baseline: no value model (`ppo.algo`);
- best-of-N then SFT on the chosen samples (expert iteration, `bon_sft`);
- DPO on the labels (no RM, no RL);
- a token-level RM trained on the comparisons together with the mock span
  labeller's marks, giving dense per-token rewards to PPO (Wu et al. 2023);
- likelihood on preferred responses plus unlikelihood on marked tokens
  (`ul`: no RM, no RL);
- online labels (Ziegler 2.3: N/2 offline, then N/2 collected from the
  moving policy) against offline (all N up front), PPO either way.

The PPO-family methods run at `Study.fixed_kl` coefficients and evaluate
their policy every 25 updates (`eval.ppo_snapshots`); DPO runs a beta ladder
(`Study.dpo_betas`), likelihood/unlikelihood an alpha ladder
(`Study.ul_alphas`), expert iteration at `Study.bon_sft_n`; so each method
traces its own gold-vs-KL frontier, and `rlhf_jax.experiments.study_table`
compares methods at fixed KL budgets on those frontiers (the aggregation
writes the tests to `verdicts.md`). Every run's eval adds a held-out mock labeller (`eval.judge`: its
own noise draw and seed, and a penalty per bad word the training labeller
does not weigh) that compares each policy's responses to the initial
policy's, since the papers' policies were judged by the labellers who
trained them. A third panel compares reward-model heads (`linear`,
`scalar_mix`, `selector`) by held-out accuracy against label count.

Figure: `results/study/study.{png,csv}` (CSV: the sweep CSV format).
`:runlocal` runs the whole graph at toy size with one seed, for CI.
"""

import dataclasses
import functools

from configs.sweeps import mock_scale
from rlhf_jax.experiments import summary_table
from rlhf_jax.experiments.sweep import (Curve, Figure, Panel, Points, Ref, Sweep, eval_point,
                                        eval_trajectory, grid, last_metric, seeds_of)


@dataclasses.dataclass(frozen=True)
class Study:
    fixed_kl: tuple[float, ...]  # KL coefficients of the PPO-family runs
    dpo_betas: tuple[float, ...]
    ul_alphas: tuple[float, ...]  # weight of the unlikelihood term
    bon_sft_n: tuple[int, ...]
    bon_sft_queries: int
    rloo_k: int
    token_reward_coef: float
    online_every: int  # PPO updates between online collections
    span_noise: float  # the training span labeller's miss and flip probability


FULL = Study(fixed_kl=(0.05, 0.2), dpo_betas=(0.03, 0.1, 0.3, 1.0), ul_alphas=(0.3, 1.0, 3.0),
             bon_sft_n=(4, 16), bon_sft_queries=1024, rloo_k=4, token_reward_coef=0.5,
             online_every=50, span_noise=0.05)
RUNLOCAL = Study(fixed_kl=(0.1,), dpo_betas=(0.1,), ul_alphas=(1.0,), bon_sft_n=(4,),
                 bon_sft_queries=32, rloo_k=4, token_reward_coef=0.5, online_every=2,
                 span_noise=0.05)

JUDGE = {"eval.judge.enabled": True}
PG = (("PPO, shared value", "study-ppo", {}),
      ("PPO, separate value", "study-ppo-separate", {"ppo.value_model": "separate"}),
      ("RLOO (no value model)", "study-rloo", {"ppo.algo": "rloo"}),
      # Group-normalised advantages over ppo.rloo_k samples per query, KL in the reward.
      ("GRPO (no value model)", "study-grpo", {"ppo.algo": "grpo"}),
      ("REINFORCE + baseline", "study-reinforce", {"ppo.algo": "reinforce"}))


def _scale(arg):
    s = mock_scale.scale(arg)
    # One seed at CI scale: the graph is what is tested, not the spread.
    return (dataclasses.replace(s, seeds=(0,)) if s.runlocal else s), (
        RUNLOCAL if s.runlocal else FULL)


def _eval(s) -> dict:
    return {"eval.num_queries": s.eval_queries, "eval.batch_size": s.eval_batch,
            "eval.best_of_n": (), **JUDGE}


def _spans(st) -> dict:
    return {"labels.spans.enabled": True, "labels.spans.miss": st.span_noise,
            "labels.spans.flip": st.span_noise}


def _labels(s, n) -> dict:
    return {**mock_scale._from_base(s), **mock_scale._label_pool(s, n), **_eval(s)}


def rm_runs(s, st, *, token: bool) -> list:
    """The study's reward models on the N-label pool (with span marks); the
    linear one's eval also gives the initial policy and best-of-N points."""
    ov = {**_labels(s, s.max_labels), **_spans(st), "reward.epochs": s.rm_epochs,
          "reward.normalize_samples": s.normalize_samples}
    if token:
        ov.update({"stages": "labels,reward", "reward.token_head": True})
    else:
        ov.update({"stages": "labels,reward,eval", "eval.best_of_n": s.best_of_n})
    return grid("study-tokrm" if token else "study-rm", s.config, s.seeds, ov)


def _ppo_overrides(s, coef) -> dict:
    return {**mock_scale._from_base(s), **_eval(s), "stages": "ppo,eval",
            "ppo.batch_size": s.ppo_batch, "ppo.total_episodes": s.ppo_batch * s.ppo_updates,
            "ppo.log_every": 1, **mock_scale.snapshots(s), "kl.adaptive": False,
            "kl.coef": coef}


def _rm_of_seed(run):
    return lambda seed: {"models/reward": Ref(f"{run}-s{seed}", "models/reward")}


def _kl_name(name, coef):
    return f"{name}-kl{coef:g}"


def method_runs(s, st) -> dict:
    """{curve label: (eval row, [(run name, runs)])} for every method's gold-vs-KL curve."""
    out = {}
    for label, name, extra in PG:
        out[label] = ("ppo", [(_kl_name(name, c), grid(
            _kl_name(name, c), s.config, s.seeds,
            {**_ppo_overrides(s, c), "ppo.rloo_k": st.rloo_k, **extra},
            copies=_rm_of_seed("study-rm"))) for c in st.fixed_kl])
    out["token-level RM + PPO (dense rewards)"] = ("ppo", [(_kl_name("study-tokppo", c), grid(
        _kl_name("study-tokppo", c), s.config, s.seeds,
        {**_ppo_overrides(s, c), **_spans(st), "reward.token_head": True,
         "ppo.token_reward_coef": st.token_reward_coef},
        copies=_rm_of_seed("study-tokrm"))) for c in st.fixed_kl])
    half = s.max_labels // 2
    updates = s.ppo_updates
    rounds = (updates - 1) // st.online_every
    out[f"PPO, online labels ({half} + {rounds} x {half // rounds})"] = ("ppo", [(
        _kl_name("study-online", c), grid(_kl_name("study-online", c), s.config, s.seeds, {
            **_ppo_overrides(s, c), **mock_scale._label_pool(s, half),
            "stages": "labels,reward,ppo,eval", "reward.epochs": s.rm_epochs,
            "reward.normalize_samples": s.normalize_samples, "labels.online.enabled": True,
            "labels.online.every": st.online_every, "labels.online.num_queries": half // rounds,
            "labels.online.reward_epochs": s.rm_epochs})) for c in st.fixed_kl])
    out["best-of-N then SFT"] = ("bon_sft", [(f"study-bonsft-n{n}", grid(
        f"study-bonsft-n{n}", s.config, s.seeds,
        {**mock_scale._from_base(s), **_eval(s), "stages": "bon_sft,eval", "bon_sft.n": n,
         "bon_sft.num_queries": st.bon_sft_queries, "bon_sft.batch_size": s.ppo_batch,
         "bon_sft.epochs": 2}, copies=_rm_of_seed("study-rm"))) for n in st.bon_sft_n])
    out["DPO"] = ("dpo", [(f"study-dpo-beta{b:g}", grid(
        f"study-dpo-beta{b:g}", s.config, s.seeds,
        {**_labels(s, s.max_labels), "stages": "labels,dpo,eval", "dpo.beta": b,
         "dpo.lr": s.dpo_lr, "dpo.batch_size": s.ppo_batch})) for b in st.dpo_betas])
    out["likelihood + unlikelihood on spans"] = ("ul", [(_ul_name(a), grid(
        _ul_name(a), s.config, s.seeds,
        {**_labels(s, s.max_labels), **_spans(st), "stages": "labels,ul,eval",
         "ul.batch_size": s.ppo_batch, "ul.alpha": a})) for a in st.ul_alphas])
    return out


def _ul_name(alpha):
    # alpha 1 keeps the name of the earlier single-alpha runs.
    return "study-ul" if alpha == 1.0 else f"study-ul-alpha{alpha:g}"


def _setting(name: str) -> str:
    """The label a point carries: the run name's setting (kl0.05 -> beta=0.05)."""
    for tag, label in (("-kl", "beta="), ("-beta", "beta="), ("-n", "N="), ("-alpha", "alpha=")):
        if tag in name:
            return label + name.rsplit(tag, 1)[1]
    return "alpha=1" if name == "study-ul" else ""


def get_sweep(arg=None):
    s, st = _scale(arg)
    methods = method_runs(s, st)
    runs = [mock_scale.base_run(s)] + rm_runs(s, st, token=False) + rm_runs(s, st, token=True)
    for _, groups in methods.values():
        for _, rs in groups:
            runs += rs
    heads = ("linear", "scalar_mix", "selector")
    counts = s.rm_label_counts[-1:] if s.runlocal else s.rm_label_counts
    for head in heads:
        for n in counts:
            runs += mock_scale.rm_runs(s, n, s.width, head)
    rm_seeds = seeds_of("study-rm", s.seeds)

    def curves(y):
        out = [Curve("best-of-N (RM-ranked; KL analytic)",
                     tuple(Points(rm_seeds, eval_point(f"best_of_{n}", "kl", y),
                                  setting=f"N={n}") for n in s.best_of_n))]
        for label, (row, groups) in methods.items():
            # PPO-family runs: every snapshot and the final policy (the frontier).
            fn = eval_trajectory("kl", y) if row == "ppo" else eval_point(row, "kl", y)
            out.append(Curve(label, tuple(Points(seeds_of(name, s.seeds), fn,
                                                 setting="" if row == "ppo" else _setting(name))
                                          for name, _ in groups),
                             line=len(groups) > 1, trajectories=row == "ppo"))
        out.append(Curve("initial policy", (Points(rm_seeds, eval_point("initial", "kl", y)),),
                         line=False))
        return tuple(out)

    head_curves = tuple(
        Curve(f"{head} head", tuple(Points(seeds_of(mock_scale.rm_name(n, s.width, head), s.seeds),
                                           last_metric("reward", "reward/val_accuracy", n))
                                    for n in counts)) for head in heads)
    kl = "KL(policy || initial) [nats]"
    fig = Figure("study", f"Which parts were necessary? {s.max_labels} labels for every method "
                 "(held-out eval)",
                 (Panel("gold score vs KL", kl, "gold score", curves("gold_score"),
                        xscale="sqrt"),
                  Panel("held-out judge: win rate against the initial policy", kl,
                        "judge win rate", curves("judge_winrate"), xscale="sqrt"),
                  Panel("reward-model heads: held-out accuracy", "training labels",
                        "RM held-out accuracy", head_curves, xscale="log")),
                 caption=mock_scale.GOLD + " Judge win rate: a held-out mock labeller's "
                 "preference for the policy's response over the initial policy's. PPO-family "
                 f"points: the policy every {s.snapshot_every} updates and at the end, at each "
                 "beta.")
    # Each part against a method without it at KL 0.5-10 (verdicts.md).
    tests = functools.partial(summary_table.frontier_verdicts, layout=summary_table.STUDY)
    return Sweep("study", tuple(runs), (fig,), runlocal=s.runlocal, tables=(tests,))
