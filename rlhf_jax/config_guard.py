"""Refuses to resume a workdir with a config other than the one it was run with.

A relaunch resumes: finished stages are skipped, an interrupted one continues
from its checkpoint. Both are only right if the config is the one that
produced what is already there. So each stage, when it starts, records the
part of the resolved config that changes its results in
`WORKDIR/stages/<stage>.config.json` (`{"hash": sha256, "config": {dotted
field: value}}`); a relaunch compares every recorded stage with the new
config before any work and fails with one line naming the differing fields,
unless `allow_changes` (`launch.py --allow_config_change`), which rewrites the
records and logs the change in `WORKDIR/config_changes.jsonl`.

What counts for a stage: the seed, `model`, `task`, `parallel`, any group this
module does not know (a new one counts until classified), the stages run before
it (its inputs), and its own groups (`STAGE_GROUPS`); nothing for `figures`,
drawn from the other stages' metrics. Log-only fields never
count: `name`, `log.*`, and every `log_every`, `eval_every`,
`checkpoint_every`, `num_logged_samples`, `num_samples_logged`,
`labels.online.poll_seconds`. A stage that has not started has no record, so
changing, say, `ppo.lr` before PPO starts is no conflict.

`config.json` is the config of the latest launch; when it changes (log-only
fields, a stage not started yet, an allowed change), the previous one is kept
as `config.<n>.json` and a line says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Mapping

# Groups each stage's results depend on, besides the global ones.
STAGE_GROUPS = {
    "pretrain": ("pretrain",),
    "sft": ("sft",),
    "labels": ("labels",),
    "reward": ("reward", "labels"),
    "ppo": ("ppo", "kl", "reward", "labels", "labels.online"),
    "dpo": ("dpo", "labels"),
    "eval": ("eval", "reward"),
    "figures": (),
}
# Groups that are some stage's own; `labels.online` only PPO's.
_OWNED = {"pretrain", "sft", "labels", "reward", "ppo", "kl", "dpo", "eval"}
_NOT_RESULTS = {"name", "log", "stages"}  # `stages` enters as each stage's inputs
_LOG_ONLY_LEAVES = {"log_every", "eval_every", "checkpoint_every", "num_logged_samples",
                    "num_samples_logged", "poll_seconds"}
CHANGES_FILE = "config_changes.jsonl"
_MAX_NAMED = 8


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def config_dict(cfg) -> dict:
    """The config (a ConfigDict) as plain JSON data: a snapshot, later changes unseen."""
    return json.loads(cfg.to_json_best_effort())


def stage_view(config: Mapping[str, Any], stage: str, stages: list[str]) -> dict[str, Any]:
    """The dotted fields of `config` (plain data) that change `stage`'s results."""
    own = STAGE_GROUPS.get(stage)
    if own == ():
        return {}  # figures: drawn from the other stages' metrics, nothing of its own
    view = {}
    for name, value in _flatten(config).items():
        parts = name.split(".")
        if parts[0] in _NOT_RESULTS or parts[-1] in _LOG_ONLY_LEAVES:
            continue
        group = "labels.online" if name.startswith("labels.online.") else parts[0]
        if own is None:  # a stage this module does not know: everything counts
            view[name] = value
        elif group in own or (group not in _OWNED and group != "labels.online"):
            view[name] = value
    view["stages before " + stage] = stages[:stages.index(stage)]
    return view


def _hash(view: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()


def record_path(workdir: str, stage: str) -> str:
    return os.path.join(workdir, "stages", f"{stage}.config.json")


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable config record ({e}); restore it or remove the "
                         "stage's outputs") from None


def _write_json(path: str, obj, sort_keys: bool = True) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys)
    os.replace(tmp, path)


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check(workdir: str, config: Mapping[str, Any], stages: list[str], *,
          allow_changes: bool = False) -> None:
    """Compares the workdir's stage records with `config` (`config_dict`); ValueError
    naming the differing fields, or (`allow_changes`) a warning and updated records."""
    diffs: dict[str, list[str]] = {}  # field -> stages it differs for
    values: dict[str, tuple] = {}
    changed_stages = []
    for stage in stages:
        recorded = _read(record_path(workdir, stage))
        if recorded is None:
            continue
        view = stage_view(config, stage, stages)
        if recorded.get("hash") == _hash(view):
            continue
        old = recorded.get("config", {})
        for name in sorted(set(old) | set(view)):
            if old.get(name, "<unset>") != view.get(name, "<unset>"):
                diffs.setdefault(name, []).append(stage)
                values[name] = (old.get(name, "<unset>"), view.get(name, "<unset>"))
        changed_stages.append((stage, old, view))
    if not diffs:
        return
    named = [f"{name}={_show(values[name][0])} now {_show(values[name][1])} "
             f"({', '.join(diffs[name])})" for name in list(diffs)[:_MAX_NAMED]]
    more = f", and {len(diffs) - _MAX_NAMED} more" if len(diffs) > _MAX_NAMED else ""
    summary = "; ".join(named) + more
    if not allow_changes:
        raise ValueError(
            f"--workdir={workdir} was run with another config: {summary}. Relaunch with "
            f"the config it was run with ({os.path.join(workdir, 'config.json')}), use a new "
            "--workdir, or pass --allow_config_change to continue with this one")
    print(f"warning: continuing {workdir} with a changed config (--allow_config_change): "
          f"{summary}", flush=True)
    with open(os.path.join(workdir, CHANGES_FILE), "a") as f:
        for stage, old, view in changed_stages:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stage": stage,
                                "changed": {k: [old.get(k), view.get(k)] for k in
                                            sorted(set(old) | set(view))
                                            if old.get(k) != view.get(k)}}) + "\n")
    for stage, _, view in changed_stages:
        _write_json(record_path(workdir, stage), {"hash": _hash(view), "config": view})


def record(workdir: str, config: Mapping[str, Any], stage: str, stages: list[str]) -> None:
    """Records `stage`'s view of `config` when it starts (kept once written)."""
    path = record_path(workdir, stage)
    if not os.path.exists(path):
        view = stage_view(config, stage, stages)
        _write_json(path, {"hash": _hash(view), "config": view})


def write_config_json(workdir: str, config: Mapping[str, Any]) -> None:
    """`config.json` := `config`; a different previous one is kept as `config.<n>.json`."""
    path = os.path.join(workdir, "config.json")
    previous = _read(path)
    if previous == config:
        return
    if previous is not None:
        n = 1
        while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
            n += 1
        kept = os.path.join(workdir, f"config.{n}.json")
        os.replace(path, kept)
        old, new = _flatten(previous), _flatten(config)
        fields = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        print(f"config.json: updated ({', '.join(fields[:_MAX_NAMED])}"
              f"{', ...' if len(fields) > _MAX_NAMED else ''}); the previous one is kept as "
              f"{os.path.basename(kept)}", flush=True)
    _write_json(path, config, sort_keys=False)
