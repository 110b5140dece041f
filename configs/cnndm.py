"""Ziegler et al. 2019 CNN/DailyMail summarisation (LHP settings: fixed KL 0.01, T=0.5).

GPT-2 124M from the hub, labels from LHP's released file, PPO with LHP's
hyperparameters (rlhf_jax.config_lib.LHP_TASKS, PAPER_DETAILS' table).

    python launch.py --config=configs/cnndm.py \
        --config.labels.path=/data/lhp/cnndm/online_45k.json \
        --config.task.dataset_path=DATA --workdir=runs/cnndm
    python launch.py --config=configs/cnndm.py:runlocal --workdir=/tmp/cnndm   # CPU smoke run

DATA: see README "Data" (books: a local text file or the Hugging Face
`bookcorpus`; tldr/cnndm: jsonl files or Hugging Face dataset names).
Expected: RM score rises at a fixed KL coefficient of 0.01; extractive summaries, as the paper reports. A full run needs accelerators (1M episodes); `:runlocal`
takes a minute or two on a CPU and checks every stage on toy data.
Switches: value=shared|separate, loss=bo4|bt, kl=adaptive|fixed|off,
whiten=on|off, adam=tf|torch, head=linear|scalar_mix, reward=rm|gold.
"""

from rlhf_jax import config_lib


def get_config(arg=None):
    c = config_lib.lhp_config("cnndm")
    return config_lib.apply_switches(c, arg, runlocal=config_lib.lhp_runlocal)
