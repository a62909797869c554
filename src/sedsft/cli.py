"""`sedsft <stage>`: every workflow stage as a command, runnable by hand outside Snakemake.

Settings come either from the workflow (`--settings` JSON: the stage's slice of the resolved
experiment) or, by hand, from `--config config.yaml --experiment NAME`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from sedsft import config as C
from sedsft.benchmarks import BenchmarkError
from sedsft.hardware import HardwareError
from sedsft.launch import pin_gpus
from sedsft.sources import DataError
from sedsft.stages import STAGES as REGISTRY, command

log = logging.getLogger("sedsft")


def _from_module(stage: str, function: str):
    """The stage module's function, imported when called: `sedsft --help` and a config error
    import no stage module, and pin_gpus runs before any stage can import torch."""
    return lambda *args: getattr(importlib.import_module(REGISTRY[stage].module), function)(*args)


# command -> (run, add its arguments)
STAGES = {command(name): (_from_module(name, f"run_{name}"), _from_module(name, f"{name}_arguments"))
          for name in REGISTRY}
GPU_COMMANDS = {command(name) for name, stage in REGISTRY.items() if stage.gpus}


def _settings(args) -> dict:
    if args.settings:
        return json.loads(args.settings)
    if not args.config:
        raise C.ConfigError("give --settings JSON or --config FILE with --experiment NAME")
    raw = C.load_config(args.config)
    if args.stage in ("compare", "compare-diversity"):  # --experiment names a comparison (config.yaml's `comparisons`)
        return C.comparison_settings(raw, args.experiment, Path(args.config).resolve().parent)
    settings = C.experiment_settings(raw, args.experiment, Path(args.config).resolve().parent)
    C.parse_experiment(settings, args.experiment)  # full check when run by hand
    return settings


def _write(path: str, payload: dict, args, settings: dict, started: float) -> None:
    from sedsft.artifacts import write_json
    from sedsft.provenance import provenance

    extra = {}
    if getattr(args, "gpus", None) is not None:  # what the job was given and what this process saw
        seen = sys.modules["torch"].cuda.device_count() if "torch" in sys.modules else None
        extra["gpus"] = {"job": args.gpus, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "seen_by_torch": seen}
    payload["provenance"] = provenance(args.experiment, settings, stage=args.stage,
                                       seconds=round(time.time() - started, 2), **extra)
    write_json(path, payload)


def shared_arguments(sub: argparse.ArgumentParser, gpus: bool) -> None:
    sub.add_argument("--experiment", required=True, help="experiment name (provenance; config lookup)")
    sub.add_argument("--settings", help="the stage's settings as JSON (what the workflow passes)")
    sub.add_argument("--config", help="config.yaml, when running by hand")
    sub.add_argument("--summary", required=True, help="JSON file: the stage's result and provenance")
    if gpus:
        sub.add_argument("--gpus", type=int, metavar="N",
                         help="GPUs the job was given (the workflow passes the count it asks the scheduler "
                              "for, sedsft.launch.job_gpus): this process sees only those it uses (one; "
                              "generate and torchrun ranks: N), none for N = 0")


def parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Every command; only the `chosen` one gets its arguments (the others' modules stay unimported)."""
    top = argparse.ArgumentParser(prog="sedsft", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="stage", required=True)
    for name, (_, add_arguments) in STAGES.items():
        sub = commands.add_parser(name)
        if name == chosen:
            shared_arguments(sub, gpus=name in GPU_COMMANDS)
            add_arguments(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv[0] if argv else None).parse_args(argv)
    if getattr(args, "gpus", None) is not None:  # before anything can initialise CUDA
        pin_gpus(args.stage, args.gpus)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.time()
    try:
        settings = _settings(args)
        run, _ = STAGES[args.stage]
        result = run(args, settings)
    except (C.ConfigError, DataError, BenchmarkError, HardwareError, FileNotFoundError) as error:
        # one clear line, not a traceback from deep inside a library
        print(f"sedsft {args.stage}: error: {error}", file=sys.stderr)
        return 2
    from sedsft.hardware import rank

    if rank() == 0:  # under torchrun every rank runs the stage; one writes its summary
        _write(args.summary, result, args, settings, started)
    log.info("%s done in %.1f s -> %s", args.stage, time.time() - started, args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
