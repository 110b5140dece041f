"""Stiennon et al.'s summarisation evaluation, in the miniature world (docs/summarization.md).

On held-out stories (`task.query_dataset=world_tldr`, test split) each policy
writes one summary at T = 0 (greedy): the pretrained-only model (zero-shot,
after `TL;DR:`), SFT, HF (the PPO policy) and best-of-N (N samples of the SFT
model at the task temperature, the one the reward model scores highest).
Each summary is compared with the story's reference (its author's TL;DR):

* `gold_pref`: the share preferred by the noise-free gold judge
  (`labelling.summary_judge.SummaryJudge`; a tie counts one half), Stiennon
  Fig. 1's "fraction preferred to reference";
* `labeller_pref`: the same by a noisy held-out labeller (Boltzmann with the
  training labellers' temperature `labels.mock_noise`, its own seed
  `eval.judge.seed`);
* `length_controlled_pref`: Stiennon App. F. A logistic regression of the
  gold preference on the policy (one intercept each) and the log length ratio
  log(words / reference words) (one shared slope), read at log ratio 0:
  sigmoid(intercept);
* copying: `novelty` (Ziegler et al.: the share of a summary's sentences that
  are not sentences of the story) and `bigram_lcs` (Stiennon App. G.5: the
  longest common subsequence of the summary's and the story's word bigrams,
  over the summary's bigram count);
* `words`, `gold_score`, `accuracy_score` and `facts_score` (the
  accuracy-only and facts judges' scores of the same reading), and
  `rm_score` (the trained reward model, references at 0 by its bias).

`evaluate(ctx)` adds this as eval.json's `summarization` block and writes
`samples.jsonl`: story, reference and each policy's summary side by side.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from rlhf_jax.data import grammar, summaries
from rlhf_jax.infra import parallel
from rlhf_jax.labelling import summary_judge
from rlhf_jax.models import loading
from rlhf_jax.stages import batched, reward, rollout
from rlhf_jax.stages.context import Context, stage_key

# Key streams inside the eval stage's key (the generic eval uses 0.. and 1000 + n).
_GREEDY_STREAM = 2000
_BEST_OF_N_STREAM = 1000  # the generic eval's: the same best-of-N samples
SAMPLES_FILE = "samples.jsonl"
NUM_SAMPLES = 16


# --------------------------------------------------------------------------
# Pure metrics.


def preference(scores_N, reference_scores_N) -> np.ndarray:
    """[N] 1 where the summary beats the reference, 0.5 on a tie, else 0."""
    a, b = np.asarray(scores_N, np.float64), np.asarray(reference_scores_N, np.float64)
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def noisy_preference(scores_N, reference_scores_N, temperature: float,
                     rng: np.random.Generator) -> np.ndarray:
    """[N] 0/1 choices of a Boltzmann labeller: the summary with probability
    sigmoid((score - reference) / temperature); temperature 0 is `preference`
    with ties drawn at random."""
    d = np.asarray(scores_N, np.float64) - np.asarray(reference_scores_N, np.float64)
    if temperature == 0:
        return np.where(d == 0, rng.random(d.shape) < 0.5, d > 0).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-np.clip(d / temperature, -50, 50)))
    return (rng.random(d.shape) < p).astype(np.float64)


def logistic_regression(x_NxF, y_N, *, ridge: float = 1e-6, iters: int = 100):
    """Weights w [F] maximising sum y log s(x.w) + (1-y) log(1-s(x.w)) - ridge |w|^2 / 2.

    Newton's method; y may be fractional (a tie counts one half). The tiny
    ridge keeps a policy whose every summary wins (or loses) finite.
    """
    x = np.asarray(x_NxF, np.float64)
    y = np.asarray(y_N, np.float64)
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        grad = x.T @ (y - p) - ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def length_controlled(prefs_N, policy_N, log_ratio_N, num_policies: int):
    """`(pref_P, slope)`: Stiennon App. F's length-controlled preference.

    Logistic regression of the preference on one-hot policy indicators and
    the log length ratio (shared slope); `pref_P[i] = sigmoid(intercept_i)`,
    the preference of policy i at the reference's length.
    """
    policy_N = np.asarray(policy_N, np.int64)
    x = np.zeros((len(policy_N), num_policies + 1))
    x[np.arange(len(policy_N)), policy_N] = 1.0
    x[:, -1] = np.asarray(log_ratio_N, np.float64)
    w = logistic_regression(x, prefs_N)
    return 1.0 / (1.0 + np.exp(-w[:num_policies])), float(w[-1])


def _sentence_keys(text: str) -> list[tuple[str, ...]]:
    return [tuple(ws) for ws, complete in summary_judge.split_sentences(text) if ws]


def sentence_novelty(summary: str, story: str) -> float:
    """Share of the summary's sentences that are not sentences of the story (nan if none)."""
    mine = _sentence_keys(summary)
    if not mine:
        return float("nan")
    theirs = set(_sentence_keys(story))
    return sum(s not in theirs for s in mine) / len(mine)


def _bigrams(text: str) -> list[tuple[str, str]]:
    ws = [w for w in grammar.words(text.replace("<|endoftext|>", " ")) if w.isalpha()]
    return list(zip(ws, ws[1:]))


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two sequences."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def bigram_lcs(summary: str, story: str) -> float:
    """LCS of the word-bigram sequences over the summary's bigram count (nan if none)."""
    mine = _bigrams(summary)
    if not mine:
        return float("nan")
    return lcs_length(mine, _bigrams(story)) / len(mine)


def summary_metrics(stories, summaries_, judge):
    """Per-summary arrays: gold, accuracy and facts scores, words, novelty, bigram LCS.

    `judge`: a `summary_judge.SummaryJudge`; the other two scores are its readings'.
    """
    read = [judge.judge(s, y) for s, y in zip(stories, summaries_)]
    gold = np.asarray([j.score for j in read])
    acc = np.asarray([summary_judge.accuracy_score(j) for j in read])
    facts = np.asarray([summary_judge.facts_score(j) for j in read])
    words = np.asarray([summary_judge.count_words(y) for y in summaries_], np.float64)
    nov = np.asarray([sentence_novelty(y, s) for s, y in zip(stories, summaries_)])
    lcs = np.asarray([bigram_lcs(y, s) for s, y in zip(stories, summaries_)])
    return {"gold": gold, "accuracy": acc, "facts": facts, "words": words, "novelty": nov,
            "lcs": lcs}


def compare(per_policy: dict, reference: dict, *, noise: float, seed: int) -> dict:
    """The summarisation block of eval.json from per-summary metrics.

    `per_policy[name]` and `reference` are `summary_metrics` dicts (plus an
    optional "rm" array) over the same N stories.
    """
    names = list(per_policy)
    rng = np.random.default_rng(seed)
    ref_words = np.maximum(reference["words"], 1.0)
    prefs, idx, ratios, out = [], [], [], {}
    for i, name in enumerate(names):
        m = per_policy[name]
        pref = preference(m["gold"], reference["gold"])
        noisy = noisy_preference(m["gold"], reference["gold"], noise, rng)
        ratio = np.log(np.maximum(m["words"], 1.0) / ref_words)
        prefs.append(pref)
        idx.append(np.full(len(pref), i))
        ratios.append(ratio)
        out[name] = {
            "gold_pref": float(np.mean(pref)),
            "gold_pref_se": float(np.std(pref) / np.sqrt(len(pref))),
            "labeller_pref": float(np.mean(noisy)),
            "gold_score": float(np.mean(m["gold"])),
            "accuracy_score": float(np.mean(m["accuracy"])),
            "facts_score": float(np.mean(m["facts"])),
            "words": float(np.mean(m["words"])),
            "novelty": float(np.nanmean(m["novelty"])) if np.any(np.isfinite(m["novelty"]))
            else float("nan"),
            "bigram_lcs": float(np.nanmean(m["lcs"])) if np.any(np.isfinite(m["lcs"]))
            else float("nan"),
            "n": int(len(pref)),
        }
        if "rm" in m:
            out[name]["rm_score"] = float(np.mean(m["rm"]))
    lc, slope = length_controlled(np.concatenate(prefs), np.concatenate(idx),
                                  np.concatenate(ratios), len(names))
    for name, p in zip(names, lc):
        out[name]["length_controlled_pref"] = float(p)
    out["reference"] = {"gold_score": float(np.mean(reference["gold"])),
                        "accuracy_score": float(np.mean(reference["accuracy"])),
                        "facts_score": float(np.mean(reference["facts"])),
                        "words": float(np.mean(reference["words"])),
                        "novelty": float(np.nanmean(reference["novelty"])),
                        "bigram_lcs": float(np.nanmean(reference["lcs"]))}
    if "rm" in reference:
        out["reference"]["rm_score"] = float(np.mean(reference["rm"]))
    out["length_slope"] = slope
    return out


# --------------------------------------------------------------------------
# The evaluation in a run.


def _policies(ctx: Context) -> dict:
    """name -> (model, params): pretrained-only, SFT, HF (PPO), as the run has them."""
    out = {"pretrained": ctx.base_model()}
    if "sft" in ctx.stages:
        out["sft"] = ctx.initial_policy()
    if os.path.exists(ctx.path("models", "policy", "model.safetensors")):
        out["hf"] = loading.load_lm(ctx.cfg, ctx.path("models", "policy"))
    return out


def evaluate(ctx: Context) -> dict:
    """eval.json's `summarization` block (module docstring); writes samples.jsonl."""
    cfg = ctx.cfg
    e, t = cfg.eval, cfg.task
    qs = ctx.queries("test", limit=e.num_queries)
    q, m = qs.query_NxQ, qs.query_mask_NxQ
    if qs.reference_NxR is None:
        raise ValueError("the summarisation evaluation needs reference summaries "
                         "(task.query_dataset='world_tldr')")
    key = stage_key(cfg, "eval")
    stories = [summaries.story_of_query(ctx.decode(row[mk > 0])) for row, mk in zip(q, m)]
    refs = [ctx.decode(row[mk > 0]) for row, mk in
            zip(qs.reference_NxR, qs.reference_mask_NxR)]
    judge = summary_judge.SummaryJudge()
    rm = ctx.reward_model()
    rm_placed = None if rm is None else ctx.dp.replicate(rm[1])

    def rm_scores(tokens_NxR, mask_NxR):
        return reward.score(rm[0], rm_placed, q, m, tokens_NxR, mask_NxR,
                            reward_at=cfg.reward.reward_at, eos_token=t.eos_token,
                            batch_size=e.batch_size, dp=ctx.dp, placed=True)

    texts, per_policy = {}, {}
    for i, (name, (model, params)) in enumerate(_policies(ctx).items()):
        raw, _ = batched.sample_responses(ctx, model, params, q, m,
                                          jax.random.fold_in(key, _GREEDY_STREAM + i),
                                          e.batch_size, greedy=True)
        tokens, mask = batched.postprocess(ctx, raw)
        texts[name] = [ctx.decode(row[mk > 0]) for row, mk in zip(tokens, mask)]
        per_policy[name] = summary_metrics(stories, texts[name], judge)
        if rm is not None:
            per_policy[name]["rm"] = rm_scores(tokens, mask)
    if rm is not None and e.best_of_n and "sft" in ctx.stages:
        n = max(e.best_of_n)
        model, params = ctx.initial_policy()
        models = rollout.PPOModels(policy=model, reference=model, reward=rm[0])
        best, _ = batched.best_of_n(ctx.dp, models, ctx.task_spec(), n, params, rm[1], q, m,
                                    jax.random.fold_in(key, _BEST_OF_N_STREAM + n),
                                    e.batch_size)
        mask = (best != t.pad_token).astype(np.int32)
        name = f"best_of_{n}"
        texts[name] = [ctx.decode(row[mk > 0]) for row, mk in zip(best, mask)]
        per_policy[name] = summary_metrics(stories, texts[name], judge)
        per_policy[name]["rm"] = rm_scores(best, mask)
    reference = summary_metrics(stories, refs, judge)
    if rm is not None:
        reference["rm"] = rm_scores(qs.reference_NxR, qs.reference_mask_NxR)
    out = compare(per_policy, reference, noise=cfg.labels.mock_noise, seed=e.judge.seed)
    if parallel.process_is_main():
        with open(ctx.path(SAMPLES_FILE), "w") as f:
            for j in range(min(NUM_SAMPLES, len(stories))):
                row = {"story": stories[j], "reference": refs[j],
                       "reference_gold": float(reference["gold"][j])}
                for name in texts:
                    row[name] = texts[name][j]
                    row[f"{name}_gold"] = float(per_policy[name]["gold"][j])
                f.write(json.dumps(row) + "\n")
        path = ctx.path("eval.json")
        merged = {}
        if os.path.exists(path):
            with open(path) as f:
                merged = json.load(f)
        merged["summarization"] = out
        with open(path, "w") as f:
            json.dump(merged, f, indent=2)
    ctx.writer.write(0, "eval", {f"eval/summarization/{name}/{k}": v
                                 for name, r in out.items() if isinstance(r, dict)
                                 for k, v in r.items()})
    for name, r in out.items():
        if isinstance(r, dict):
            print(f"summarization | {name:>12} | " + " | ".join(
                f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)), flush=True)
    return out


# --------------------------------------------------------------------------
# Sweep extractors (configs/sweeps/world_*.py).


def parameter_count(n_embd: int, n_layer: int, n_positions: int, vocab_rows: int) -> int:
    """Parameters of the project's GPT-2 (LM head tied to the token embedding):
    embeddings, per block 12 d^2 + 13 d (attention, MLP, two layer norms), final norm."""
    d = n_embd
    return vocab_rows * d + n_positions * d + n_layer * (12 * d * d + 13 * d) + 2 * d


def run_parameter_count(workdir: str) -> int:
    """`parameter_count` of a run's policy, from its config.json and tokenizer."""
    with open(os.path.join(workdir, "config.json")) as f:
        model = json.load(f)["model"]
    tok_dir = model["tokenizer"] if model["tokenizer"] not in ("", "synthetic") else os.path.join(
        workdir, "tokenizer")
    with open(os.path.join(tok_dir, "tokenizer.json")) as f:
        tok = json.load(f)
    ids = set(tok["model"]["vocab"].values()) | {t["id"] for t in tok.get("added_tokens", [])}
    # Rows: the vocabulary plus the pad id (data.synthetic.model_vocab_size).
    return parameter_count(model["n_embd"], model["n_layer"], model["n_positions"], len(ids) + 1)


def summarization_value(workdir: str, policy: str, key: str) -> float:
    """eval.json's `summarization[policy][key]` of a run."""
    path = os.path.join(workdir, "eval.json")
    with open(path) as f:
        block = json.load(f).get("summarization", {})
    if policy not in block or key not in block[policy]:
        raise ValueError(f"{path}: no summarization[{policy!r}][{key!r}]")
    return float(block[policy][key])


def summarization_point(policy: str, y: str, x="params"):
    """A sweep `Extractor`: one point (x, `summarization[policy][y]`). `x`: "params"
    (the policy's parameter count), a number (a category's position), or
    ("eval", policy, key) for a value of eval.json's generic block (e.g. PPO's KL)."""

    def fn(workdir):
        if x == "params":
            xv = float(run_parameter_count(workdir))
        elif isinstance(x, tuple):
            with open(os.path.join(workdir, "eval.json")) as f:
                xv = float(json.load(f)[x[1]][x[2]])
        else:
            xv = float(x)
        return np.asarray([xv]), np.asarray([summarization_value(workdir, policy, y)])

    fn.source = f"eval.json: summarization {policy} {y} vs {x if isinstance(x, str) else x!r}"
    return fn
