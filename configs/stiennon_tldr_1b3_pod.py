"""Stiennon et al. 2020 TL;DR at the paper's 1.3B size, on a TPU v4-32 slice (16 chips).

`configs/stiennon_tldr.py` (SFT -> pairwise RM at EOS -> PPO with a separate
value network, fixed KL 0.05) at the 1.3B shape (d_model 2048, 24 layers, 16
heads, 2048 positions) and PPO batch 512 (docs/implementation_details.md item 29), with bf16
compute over float32 master weights, per-block rematerialisation, a bf16 KV
cache, and FSDP on a 2 x 8 (data x fsdp) mesh: each model's params and Adam
state are split 8 ways, and every chip holds distinct rows of each batch.

    python launch.py --config=configs/stiennon_tldr_1b3_pod.py \
        --config.labels.path=tests/fixtures/sff_comparisons.jsonl --dry_run  # memory per chip
    python launch.py --config=configs/stiennon_tldr_1b3_pod.py:runlocal --workdir=/tmp/pod
    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd rlhf_jax && \
        python launch.py --config=configs/stiennon_tldr_1b3_pod.py \
        --config.model.name_or_path=/gcs/models/gpt-1.3b \
        --config.task.dataset_path=/gcs/data/tldr_3_filtered \
        --config.labels.path=/gcs/data/comparisons/train.jsonl --workdir=/gcs/runs/stiennon-1b3"

Expected memory per chip (`--dry_run`, the PPO stage's peak): 12.9 GiB of a
v4 chip's 32 GiB. On a v5e-16 (16 chips of 16 GiB) add
`--config.parallel.fsdp=16`: 10.5 GiB. The paper's 1.3B weights are not
public: `model.name_or_path` takes any GPT-2-architecture checkpoint
(gelu_new) of this shape in Hugging Face layout, on storage every worker sees
(its config.json overrides the dims below at run time); the workdir must be
shared too (a gcsfuse mount or NFS). 1M episodes are 1,954 PPO updates.
Expected result: as `stiennon_tldr.py` at the paper's scale (policies the
reward model prefers to SFT's at a KL of a few nats).
"""

from configs import stiennon_tldr
from rlhf_jax import config_lib


def get_config(arg=None):
    c = stiennon_tldr.get_config()
    c.name = "stiennon_tldr_1b3_pod"
    c.model.name_or_path = ""  # a 1.3B GPT-2-architecture checkpoint, given on the command line
    c.model.tokenizer = "gpt2"  # GPT-2's BPE, as the paper's models
    c.model.n_embd = 2048  # the 1.3B shape; the checkpoint's config.json wins at run time
    c.model.n_layer = 24
    c.model.n_head = 16
    c.model.n_positions = 2048
    c.model.dtype = "bfloat16"  # compute
    c.model.param_dtype = "float32"  # master weights and Adam state
    c.model.remat = True  # keep only each block's input for the backward pass
    c.model.kv_cache_dtype = "bfloat16"
    c.ppo.batch_size = 512  # Stiennon's 1.3B
    c.parallel.mode = "mesh"
    c.parallel.num_devices = 16  # TPU v4-32: 16 chips (validation and --dry_run use it)
    c.parallel.fsdp = 8  # mesh 2 (data) x 8 (fsdp)
    return config_lib.apply_switches(c, arg, runlocal=runlocal)


def runlocal(c):
    """The paper config's toy sizes, in mesh mode on whatever devices there are."""
    stiennon_tldr._runlocal(c)
    c.parallel.num_devices = 0
    c.parallel.fsdp = 1
