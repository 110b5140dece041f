"""Runs an experiment's stages: `python launch.py --config=configs/NAME.py[:ARGS] --workdir=DIR`.

With no flags it runs the offline default, `configs/mock_sentiment.py`
(Ziegler's mock-sentiment experiment in miniature, no network), into a fresh
directory under ./runs/. Relaunching with the same --workdir resumes; a
finished workdir does no new work. `--dry_run` prints the resolved config and
derived sizes and exits. `--sweep=configs/sweeps/NAME.py[:runlocal]` runs a
sweep's members (each resumable the same way) and aggregates its figures
(`rlhf_jax/experiments/sweep.py`).
"""

import datetime
import json
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, "configs", "mock_sentiment.py")



def _no_field_message(e: BaseException, argv) -> str:
    """One line for an override of a field the config lacks: `--config.ppo.lrr`.

    ml_collections raises AttributeError/KeyError with `'lrr'\nDid you mean "lr"
    instead of "lrr"?` as the message (repr'd once more by KeyError)."""
    text = str(e)
    for _ in range(3):  # undo the layers of repr
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1].encode().decode("unicode_escape")
    lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
    field = lines[0] if lines else "?"
    hint = next((line for line in lines[1:] if line.startswith("Did you mean")), "")
    named = [a.split("=", 1)[0] for a in argv
             if a.startswith("--config.") and field in a.split("=", 1)[0].split(".")[1:]]
    return (f"{named[0] if named else '--config.*'}: the config has no field {field!r}"
            + (f" ({hint[0].lower()}{hint[1:]})" if hint else ""))


try:
    # With the default config file, the overrides are applied here, at import.
    config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                    "Experiment config file[:switches].", lock_config=True)
except (AttributeError, KeyError) as _e:
    if "--traceback" in sys.argv:
        raise
    print(f"error: {_no_field_message(_e, sys.argv)}", file=sys.stderr)
    sys.exit(2)
flags.DEFINE_string("workdir", None, "Output directory (default: ./runs/<config>-<time>).")
flags.DEFINE_bool("dry_run", False, "Print the resolved config and derived sizes, then exit.")
flags.DEFINE_bool("traceback", False, "Show the full traceback of a config or data error.")
flags.DEFINE_bool("sweep_members", True, "In a sweep, train the reward-model and PPO stages "
                  "of runs that differ only in seed or numeric hyperparameters as one "
                  "vmapped program each "
                  "(rlhf_jax/members.py); --nosweep_members runs each alone.")
flags.DEFINE_bool("compile_cache", True, "Keep compiled programs in a persistent cache, so a "
                  "relaunch or a similar run loads them (--nocompile_cache: off).")
flags.DEFINE_string("compile_cache_dir", None, "Compilation cache directory (default: "
                    "$RLHF_JAX_COMPILE_CACHE, $JAX_COMPILATION_CACHE_DIR, else "
                    "~/.cache/rlhf_jax/jax; see rlhf_jax/infra/compile_cache.py).")
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir although its started stages "
                  "ran with another config (see rlhf_jax/config_guard.py).")
flags.DEFINE_string("sweep", None, "Sweep file[:runlocal] (configs/sweeps/NAME.py): run its "
                    "members under --workdir/runs, aggregate into --workdir/NAME and "
                    "results/NAME; --config is not used (see rlhf_jax/experiments/sweep.py).")


class _NoLibraryTracebacks(std_logging.Filter):
    """Orbax logs a failed background save with its traceback, then raises it in the
    main thread, where it becomes one `error:` line: keep its log to one line too,
    and drop asyncio's note on the same failed write found at exit."""

    def filter(self, record):
        if record.name == "asyncio" and "never retrieved" in str(record.msg):
            return False
        if record.exc_info and "/orbax/" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Progress is printed by the stages; library INFO logs (Orbax) are noise.
    if flags.FLAGS.verbosity <= 0:
        logging.set_verbosity(logging.WARNING)
    if not flags.FLAGS.traceback:
        logging.get_absl_handler().addFilter(_NoLibraryTracebacks())
    from rlhf_jax import config_check, pipeline

    cfg = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or os.path.join(
        "runs", f"{cfg.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if not flags.FLAGS.dry_run:
        from rlhf_jax.infra import compile_cache

        compile_cache.enable(flags.FLAGS.compile_cache_dir, off=not flags.FLAGS.compile_cache)
    try:
        if flags.FLAGS.sweep:
            from rlhf_jax.experiments import sweep_run

            spec = sweep_run.load_sweep(flags.FLAGS.sweep)
            sweep_dir = flags.FLAGS.workdir or os.path.join("runs", "sweeps")
            print(f"sweep {spec.name}: workdir {os.path.abspath(sweep_dir)}", flush=True)
            sweep_run.run_sweep(spec, sweep_dir, dry_run=flags.FLAGS.dry_run,
                                results_dir=os.path.join(_HERE, "results"),
                                members=flags.FLAGS.sweep_members)
            return
        if flags.FLAGS.dry_run:
            import jax

            n = cfg.parallel.num_devices or jax.device_count()
            derived = config_check.resolve(cfg, n)
            config_check.check_files(cfg)
            print(cfg)
            from rlhf_jax import memory  # shapes only (jax.eval_shape): nothing allocated

            print(memory.format_report(memory.report(cfg, n)))
            print("derived:", json.dumps(derived, indent=2, default=str))
            return
        print(f"workdir: {os.path.abspath(workdir)}", flush=True)
        results = pipeline.run(cfg, workdir, allow_config_change=flags.FLAGS.allow_config_change)
    except pipeline.Preempted as e:
        print(f"preempted during {e}; state saved. Relaunch the same command to resume.")
        sys.exit(143)
    except Exception as e:  # pylint: disable=broad-except
        if flags.FLAGS.traceback:
            raise
        from rlhf_jax.infra.files import disk_error

        disk = disk_error(e)
        if disk:
            # The disk mid-run (full, read-only): what finished is kept (atomic writes,
            # Orbax's tmp-then-rename checkpoints), so the same command resumes.
            print(f"error: {disk} (during the run; fix it and relaunch the same command to "
                  "resume)", file=sys.stderr)
            sys.exit(1)
        if not isinstance(e, (ValueError, FileNotFoundError)):
            raise
        # Config and data errors: one clear line (the traceback with --traceback).
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    logging.info("results: %s", results)
    print(f"done in {results['total_seconds']:.0f}s; outputs in {os.path.abspath(workdir)}")


def parse_flags(argv):
    """absl's flag parsing, with a config error as one `error:` line and exit code 2.

    A bad switch (`:runlocal,bogus`) or override (`--config.ppo.nope=1`) fails
    while the flags are parsed, before `main`; absl would print the config
    file's traceback. `--traceback` keeps it.
    """
    try:
        rest = flags.FLAGS(argv)
        flags.FLAGS.config.keys()  # a config file that fails to load fails here, not in main
        return rest
    except OSError as e:  # --config=configs/nosuch.py, or a file that raises
        if "--traceback" in argv:
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        given = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
                     _DEFAULT_CONFIG)
        print(f"error: --config={given}: cannot load it ({lines[-1] if lines else e})",
              file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        if "--traceback" in argv:
            raise
        # config_flags embeds the loading traceback; its last line is the error.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = lines[-1] if lines else repr(e)
        for prefix in ("ValueError: ", "TypeError: ", "KeyError: ", "AttributeError: "):
            message = message.removeprefix(prefix)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:
        # An override of a field the config does not have (config_flags raises
        # these outside absl's flags.Error).
        if "--traceback" in argv:
            raise
        print(f"error: {_no_field_message(e, argv)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
