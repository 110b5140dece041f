"""Stiennon et al. 2020 TL;DR on Qwen2.5-0.5B, on one GPU.

`configs/stiennon_tldr.py` (SFT -> pairwise RM at EOS -> PPO with a separate
value network from the RM, fixed KL 0.05) with today's small open model in
place of GPT-2: Qwen2.5-0.5B (494M parameters, grouped-query attention with 2
key/value heads, QKV biases, tied embeddings, its own 151k-token tokenizer),
bf16 compute over float32 master weights, per-layer rematerialisation and a
bf16 KV cache. The model and its tokenizer come from one local Hugging Face
directory (config.json, model.safetensors, tokenizer.json); its config.json
picks the architecture. The query is SFF's plain template (a base model);
for an instruct checkpoint with mock or our jsonl labels,
`--config.task.query_format=chat` puts it in the tokenizer's chat template.

    python launch.py --config=configs/stiennon_tldr_qwen.py \
        --config.labels.path=tests/fixtures/sff_comparisons.jsonl --dry_run  # memory per GPU
    python launch.py --config=configs/stiennon_tldr_qwen.py \
        --config.model.name_or_path=/models/Qwen2.5-0.5B \
        --config.task.dataset_path=/data/tldr_3_filtered \
        --config.labels.path=/data/comparisons/train.jsonl \
        --config.labels.val_path=/data/comparisons/valid.jsonl --workdir=runs/stiennon_qwen
    python launch.py --config=configs/stiennon_tldr_qwen.py:runlocal --workdir=/tmp/sq  # CPU smoke

`--dry_run` needs no weights (the architecture of `Qwen/Qwen2.5-0.5B` is
known to `models/arch.py`): 494,032,768 parameters per model; estimated peak
29.7 GiB per device (SFT at 16 rows of 560 tokens; PPO 26.9 GiB), so one
40-80 GB GPU. No gradient accumulation exists, so the batches are ours:
SFT 16 (Stiennon: 128, 7,288 steps), PPO 64 episodes per update (15,625
updates for 1M episodes) in minibatches of 32. The `:runlocal` variant runs every stage on a
tiny random Qwen2-architecture model and the TL;DR fixture. Not run here at
full size: no result is claimed; what to expect is the paper's shape (RM
validation accuracy above chance, PPO summaries the RM prefers to SFT's at a
KL of a few nats), measured only at GPT-2 sizes in this repository.
"""

from configs import stiennon_tldr
from rlhf_jax import config_lib


def get_config(arg=None):
    c = stiennon_tldr.get_config()
    c.name = "stiennon_tldr_qwen"
    # A local directory on the command line; the name sizes --dry_run without weights.
    c.model.name_or_path = "Qwen/Qwen2.5-0.5B"
    c.model.tokenizer = ""  # the checkpoint directory's own tokenizer
    c.model.arch = "qwen2"  # its config.json decides at run time; this names it for runlocal
    c.model.n_embd = 896  # Qwen2.5-0.5B's shape (its config.json wins at run time)
    c.model.n_layer = 24
    c.model.n_head = 14
    c.model.n_kv_head = 2
    c.model.n_positions = 32768
    c.model.dtype = "bfloat16"  # compute
    c.model.param_dtype = "float32"  # master weights and Adam state
    c.model.remat = True  # keep only each layer's input for the backward pass
    c.model.kv_cache_dtype = "bfloat16"
    c.task.eos_token = None  # the tokenizer's (<|endoftext|>), not GPT-2's 50256
    # Outside the model's 151,936 embedding rows, not only the tokenizer's 151,665
    # tokens: the policy can sample the unused rows in between, never this id.
    c.task.pad_token = 151936
    # One GPU, no gradient accumulation: batches cut so the 151k-way LM head's
    # float32 logits fit (the memory report's numbers, in the docstring).
    c.sft.batch_size = 16  # ours (Stiennon: 128); 116,608 posts -> 7,288 steps
    c.ppo.batch_size = 64  # ours (Stiennon: 512 at 1.3B); 1M episodes -> 15,625 updates
    c.ppo.nminibatches = 2  # minibatches of 32 rows
    return config_lib.apply_switches(c, arg, runlocal=runlocal)


def runlocal(c):
    """The paper config's toy sizes on a tiny random Qwen2-architecture model."""
    stiennon_tldr._runlocal(c)
    c.model.arch = "qwen2"
    c.model.n_kv_head = 0
    c.model.dtype = "float32"
    c.model.kv_cache_dtype = ""
