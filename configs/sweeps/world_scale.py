"""The summarisation sweeps' shared scale and runs (a helper, not a sweep).

Runs (names shared by every world_* sweep, so each is trained once per --workdir):

  wpre-w<W>[-lead] a GPT-2 of width W pretrained on the summarisation world's
                   corpus (`configs/world_tldr.py`); the main width's run also
                   trains the tokenizer every other run reads. `-lead`: every
                   story in the lead form (`task.story_lead`), for the sweeps
                   whose scale has `lead` set; its runs carry the suffix too.
  wsft-w<W>[-lead] that model fine-tuned on the references (SFT, seed 0).
  wtldr-w<W>[-lead][-b<beta>][-accuracy|-facts|-skim]-s<seed>
                   configs/world_tldr.py from that SFT model: pairwise labels
                   on SFT samples and references (full summary judge, or the
                   accuracy-only, facts or skim judge), a reward model at EOS
                   biased so the references score 0, PPO with a value network
                   from the RM at the config's fixed KL (or beta), and the
                   summarisation evaluation.
  wkl<beta>-w<W>-s<seed>
                   PPO at another fixed KL coefficient from the KL ladder's
                   width's SFT model and the reward model of the same seed
                   (copied), then the evaluation.

One pretrained and one SFT model per size, as the paper has; seeds change
the labels (samples and labeller noise), the RM, PPO and the evaluation's
sampling. So HF's seed spread is the human-feedback stages' own, and SFT's
preference is one model's (its standard error over stories is in eval.json).
"""

from __future__ import annotations

import dataclasses

from configs import world_tldr
from rlhf_jax.experiments.sweep import Ref, Run, grid

CONFIG = "configs/world_tldr.py"


@dataclasses.dataclass(frozen=True)
class Scale:
    runlocal: bool
    seeds: tuple[int, ...]
    widths: tuple[tuple[int, int, int], ...]  # (n_embd, n_layer, n_head), about 3x params apart
    main: int  # index of the width the copying sweep uses (it trains the tokenizer)
    kl_main: int  # index of the width the KL ladder (world_overopt) uses
    num_docs: int  # pretraining stories
    task_docs: int  # training stories (valid, test: a tenth)
    sft_train: int
    labels: int
    ppo_updates: int
    ppo_batch: int
    eval_queries: int
    kl_coefs: tuple[float, ...]
    lead: bool = False  # stories in the lead form (the main event first)

    @property
    def config(self) -> str:
        return CONFIG + (":runlocal" if self.runlocal else "")

    @property
    def main_width(self) -> int:
        return self.widths[self.main][0]


# Three sizes (0.06M, 0.18M, 0.55M parameters), five seeds; the copying sweep
# at the largest, where the models copy the story's event; the KL ladder at the
# middle size, so that world_overopt (15 more PPO runs) fits 90 minutes from an
# empty workdir on the 2-core CPU. 100 PPO updates: in the 150-update runs at
# beta >= 0.05, gold score and KL barely moved after update 75; at beta 0.01
# they were still moving, so the ladder's far end moves less (docs/summarization.md).
# KL ladder: about 4x apart below the config's own 0.5 (its main run); SFT is
# the KL-0 end, so no coefficient above 0.5 is run.
FULL = Scale(runlocal=False, seeds=(0, 1, 2, 3, 4), widths=((32, 2, 2), (64, 2, 2), (128, 2, 4)),
             main=2, kl_main=1, num_docs=40000, task_docs=8192, sft_train=8192, labels=4096,
             ppo_updates=100, ppo_batch=64, eval_queries=256,
             kl_coefs=(0.01, 0.05, 0.2))

# CI scale: the same run graph with 1-layer models of widths 8 and 16, two seeds.
RUNLOCAL = Scale(runlocal=True, seeds=(0, 1), widths=((8, 1, 2), (16, 1, 2)), main=1, kl_main=0,
                 num_docs=1000, task_docs=320, sft_train=32, labels=32, ppo_updates=2,
                 ppo_batch=16, eval_queries=16, kl_coefs=(0.0, 0.2))


def scale(arg: str | None) -> Scale:
    """`None` -> the sweep scale; `"runlocal"` -> the CI scale; else ValueError."""
    if not arg:
        return FULL
    if arg == "runlocal":
        return RUNLOCAL
    raise ValueError(f"sweep argument {arg!r}: expected nothing or 'runlocal'")


def _size(width) -> dict:
    n_embd, n_layer, n_head = width
    return {"model.n_embd": n_embd, "model.n_layer": n_layer, "model.n_head": n_head}


def _lead(lead: bool) -> str:
    return "-lead" if lead else ""


def pretrain_name(width, lead: bool = False) -> str:
    return f"wpre-w{width[0]}{_lead(lead)}"


def pretrain_run(s: Scale, width) -> Run:
    ov = {**_size(width), "stages": "pretrain", "pretrain.num_docs": s.num_docs,
          "task.num_docs": s.task_docs, "task.story_lead": s.lead, "log.tensorboard": False}
    if width != s.widths[s.main]:
        ov["model.tokenizer"] = Ref(pretrain_name(s.widths[s.main], s.lead), "tokenizer")
    return Run(pretrain_name(width, s.lead), s.config, ov)


def pretrain_runs(s: Scale, width) -> list[Run]:
    main = s.widths[s.main]
    return [pretrain_run(s, main)] + ([] if width == main else [pretrain_run(s, width)])


def _from_pretrained(s: Scale, width) -> dict:
    return {**_size(width), "model.init": "pretrained", "pretrain.num_docs": s.num_docs,
            "model.name_or_path": Ref(pretrain_name(width, s.lead), "models/pretrained"),
            "model.tokenizer": Ref(pretrain_name(s.widths[s.main], s.lead), "tokenizer"),
            "task.num_docs": s.task_docs, "task.story_lead": s.lead, "sft.num_train": s.sft_train,
            "labels.num_train": s.labels, "ppo.batch_size": s.ppo_batch,
            "ppo.total_episodes": s.ppo_batch * s.ppo_updates, "ppo.log_every": 1,
            "eval.num_queries": s.eval_queries, "log.tensorboard": False}


def sft_name(width, lead: bool = False) -> str:
    return f"wsft-w{width[0]}{_lead(lead)}"


def sft_run(s: Scale, width) -> Run:
    return Run(sft_name(width, s.lead), s.config,
               {**_from_pretrained(s, width), "stages": "sft"})


def _sft_copies(width, lead: bool = False) -> dict:
    """The SFT stage done: its model and marker come along (run `sft_name(width)`)."""
    return {"models/sft": Ref(sft_name(width, lead), "models/sft"),
            "stages/sft.json": Ref(sft_name(width, lead), "stages/sft.json")}


def tldr_name(width, judge: str = "full", kl_coef: float | None = None,
              lead: bool = False) -> str:
    return (f"wtldr-w{width[0]}{_lead(lead)}" + ("" if kl_coef is None else f"-b{kl_coef:g}")
            + ("" if judge == "full" else f"-{judge}"))


def tldr_runs(s: Scale, width, judge: str = "full", kl_coef: float | None = None) -> list[Run]:
    """The whole Stiennon pipeline after pretraining, per seed; `kl_coef`: PPO's fixed
    KL coefficient, None for the config's."""
    ov = {**_from_pretrained(s, width), "stages": "sft,labels,reward,ppo,eval",
          "labels.gold": world_tldr.JUDGES[judge]}
    if kl_coef is not None:
        ov["kl.coef"] = kl_coef
    return (pretrain_runs(s, width) + [sft_run(s, width)]
            + grid(tldr_name(width, judge, kl_coef, s.lead), s.config, s.seeds, ov,
                   copies=_sft_copies(width, s.lead)))


def kl_name(coef: float, width) -> str:
    return f"wkl{coef:g}-w{width[0]}"


def kl_runs(s: Scale, coef: float) -> list[Run]:
    """PPO at fixed KL `coef` from the KL width's SFT model and RM of the same seed."""
    main = s.widths[s.kl_main]
    src = tldr_name(main)
    ov = {**_from_pretrained(s, main), "stages": "sft,ppo,eval", "kl.coef": coef}

    def copies(seed):  # the shared SFT model, and the reward model of this seed
        return {**_sft_copies(main), "models/reward": Ref(f"{src}-s{seed}", "models/reward")}

    return tldr_runs(s, main) + grid(kl_name(coef, main), s.config, s.seeds, ov, copies=copies)
