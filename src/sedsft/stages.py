"""The workflow's stages, named once.

A stage's name is its Snakemake rule (what logs, `--until` and the timing files show); its
command is `sedsft <name with dashes>`. The module named here holds the command:
`<name>_arguments(parser)` adds the stage's own flags, `run_<name>(args, settings)` does the
work and returns the summary. `sections` are the settings the stage reads (config.stage_settings:
a rule passes exactly these, so editing one re-runs only the stages that read it); None for a
stage that takes no experiment slice. `gpus`: the stage runs a model, so its job may be given
GPUs (launch.job_gpus) and its command takes --gpus.

Standard library only: config, launch, the CLI and the Snakefile read this at start-up.
"""

from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    module: str
    sections: tuple[str, ...] | None
    gpus: bool = False
    # the shared stages whose artifacts this one reads: an experiment reuses another's artifact of
    # this stage only if those agree too (config.reuse_settings; tiny's RL prompts are not micro's)
    reads: tuple[str, ...] = ()


# Two seeds (README "Seeds"): `data_seed` makes what every seed of an experiment shares (the tiny
# task, the tiny base model, the diversity prompt set; data prep and tau read no seed at all), `seed`
# what varies between seeds (SFT data order, diversity, RL and evaluation sampling).
STAGES: dict[str, Stage] = {
    "tiny_task": Stage("sedsft.tinytask", ("data_seed", "system_prompt", "model.tiny")),
    "base_model": Stage("sedsft.tinymodel", ("data_seed", "system_prompt", "model"), reads=("tiny_task",)),
    "sft_data": Stage("sedsft.data", ("system_prompt", "model", "data.sft"), reads=("tiny_task", "base_model")),
    "rl_prompts": Stage("sedsft.data", ("system_prompt", "data.rl"), reads=("tiny_task",)),
    "benchmark_data": Stage("sedsft.data", ("benchmarks_dir", "eval.limit"), reads=("tiny_task",)),
    "threshold": Stage("sedsft.threshold", ("model", "threshold", "sft.top_k", "sft.ratio"), gpus=True,
                       reads=("base_model", "sft_data")),
    "sft": Stage("sedsft.sft", ("seed", "model", "sft"), gpus=True),
    "diversity": Stage("sedsft.diversity", ("seed", "data_seed", "system_prompt", "model.trust_remote_code", "diversity"),
                       gpus=True),
    "rl": Stage("sedsft.rl", ("seed", "model.trust_remote_code", "rl"), gpus=True),
    # plus the one benchmark's sampling settings: see config.generate_settings()
    "generate": Stage("sedsft.generation", ("seed", "system_prompt", "model.trust_remote_code", "eval.backend",
                                            "eval.tensor_parallel_size", "eval.batch_size", "eval.max_new_tokens"),
                      gpus=True),
    "grade": Stage("sedsft.evaluate", ("eval.grading_workers", "eval.grading_timeout_s")),
    "eval_report": Stage("sedsft.evaluate", None),  # reads only the files it is given
    "seeds": Stage("sedsft.seeds", None),  # --settings: the experiment and its seed runs (common.smk seeds_json)
    "compare": Stage("sedsft.compare", None),  # --settings: the comparison (common.smk comparison_json)
    "compare_diversity": Stage("sedsft.seeds", None),  # the comparison's SFT diversity only, over seeds
}


def command(stage: str) -> str:
    return stage.replace("_", "-")
