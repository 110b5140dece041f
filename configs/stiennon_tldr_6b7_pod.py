"""Stiennon et al. 2020 TL;DR at the paper's 6.7B size, on a TPU v4-64 slice (32 chips).

`configs/stiennon_tldr.py` (SFT -> pairwise RM at EOS -> PPO with a separate
value network, fixed KL 0.05) at the 6.7B shape (d_model 4096, 32 layers, 32
heads, 2048 positions) and PPO batch 256 (docs/implementation_details.md item 29), with bf16
compute over float32 master weights, per-block rematerialisation, a bf16 KV
cache, and FSDP over the whole slice (a 1 x 32 data x fsdp mesh). The PPO
stage holds four 6.7B models (policy, value, reference, reward model) and
Adam state for two: about 215 GB, split 32 ways.

    python launch.py --config=configs/stiennon_tldr_6b7_pod.py \
        --config.labels.path=tests/fixtures/sff_comparisons.jsonl --dry_run  # memory per chip
    python launch.py --config=configs/stiennon_tldr_6b7_pod.py:runlocal --workdir=/tmp/pod
    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd rlhf_jax && \
        python launch.py --config=configs/stiennon_tldr_6b7_pod.py \
        --config.model.name_or_path=/gcs/models/gpt-6.7b \
        --config.task.dataset_path=/gcs/data/tldr_3_filtered \
        --config.labels.path=/gcs/data/comparisons/train.jsonl --workdir=/gcs/runs/stiennon-6b7"

Expected memory per chip (`--dry_run`, the PPO stage's peak): 18.0 GiB of a
v4 chip's 32 GiB. On a v5e-64 (64 chips of 16 GiB) add
`--config.parallel.num_devices=64 --config.parallel.fsdp=64`: 13.6 GiB. The
paper's 6.7B weights are not public: `model.name_or_path` takes any
GPT-2-architecture checkpoint (gelu_new) of this shape in Hugging Face layout,
on storage every worker sees (its config.json overrides the dims below at run
time); the workdir must be shared too (a gcsfuse mount or NFS). 1M episodes
are 3,906 PPO updates. Expected result: as `stiennon_tldr.py` at the paper's
largest scale.
"""

from configs import stiennon_tldr_1b3_pod
from rlhf_jax import config_lib


def get_config(arg=None):
    # The 1.3B pod config (bf16 compute over f32 master weights, remat, bf16 KV
    # cache, mesh mode) at the 6.7B shape, batch and slice.
    c = stiennon_tldr_1b3_pod.get_config()
    c.name = "stiennon_tldr_6b7_pod"
    c.model.n_embd = 4096  # the 6.7B shape; the checkpoint's config.json wins at run time
    c.model.n_layer = 32
    c.model.n_head = 32
    c.ppo.batch_size = 256  # Stiennon's 6.7B
    c.parallel.num_devices = 32  # TPU v4-64: 32 chips (validation and --dry_run use it)
    c.parallel.fsdp = 32  # mesh 1 (data) x 32 (fsdp)
    return config_lib.apply_switches(c, arg, runlocal=stiennon_tldr_1b3_pod.runlocal)
