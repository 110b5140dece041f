"""Ziegler et al. 2019 sentiment (books, human labels): continuations people judged positive.

GPT-2 124M from the hub, labels from LHP's released file, PPO with LHP's
hyperparameters (rlhf_jax.config_lib.LHP_TASKS, PAPER_DETAILS' table).

    python launch.py --config=configs/sentiment.py \
        --config.labels.path=/data/lhp/sentiment/offline_5k.json \
        --config.task.dataset_path=DATA --workdir=runs/sentiment
    python launch.py --config=configs/sentiment.py:runlocal --workdir=/tmp/sentiment   # CPU smoke run

DATA: see README "Data" (books: a local text file or the Hugging Face
`bookcorpus`; tldr/cnndm: jsonl files or Hugging Face dataset names).
Expected: the RM's held-out best-of-4 accuracy in the paper's range; PPO raises RM score at the adaptive KL target of 6 nats. A full run needs accelerators (1M episodes); `:runlocal`
takes a minute or two on a CPU and checks every stage on toy data.
Switches: value=shared|separate, loss=bo4|bt, kl=adaptive|fixed|off,
whiten=on|off, adam=tf|torch, head=linear|scalar_mix, reward=rm|gold.
"""

from rlhf_jax import config_lib


def get_config(arg=None):
    c = config_lib.lhp_config("sentiment")
    return config_lib.apply_switches(c, arg, runlocal=config_lib.lhp_runlocal)
