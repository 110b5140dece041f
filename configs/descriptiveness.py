"""Ziegler et al. 2019 descriptiveness (books, human labels): vividly descriptive continuations.

GPT-2 124M from the hub, labels from LHP's released file, PPO with LHP's
hyperparameters (rlhf_jax.config_lib.LHP_TASKS, PAPER_DETAILS' table).

    python launch.py --config=configs/descriptiveness.py \
        --config.labels.path=/data/lhp/descriptiveness/offline_5k.json \
        --config.task.dataset_path=DATA --workdir=runs/descriptiveness
    python launch.py --config=configs/descriptiveness.py:runlocal --workdir=/tmp/descriptiveness   # CPU smoke run

DATA: see README "Data" (books: a local text file or the Hugging Face
`bookcorpus`; tldr/cnndm: jsonl files or Hugging Face dataset names).
Expected: as sentiment: RM score rises at KL ~6 nats, samples become more descriptive. A full run needs accelerators (1M episodes); `:runlocal`
takes a minute or two on a CPU and checks every stage on toy data.
Switches: value=shared|separate, loss=bo4|bt, kl=adaptive|fixed|off,
whiten=on|off, adam=tf|torch, head=linear|scalar_mix, reward=rm|gold.
"""

from rlhf_jax import config_lib


def get_config(arg=None):
    c = config_lib.lhp_config("descriptiveness")
    return config_lib.apply_switches(c, arg, runlocal=config_lib.lhp_runlocal)
