# sedsft: SED-SFT -> GRPO -> evaluation on math reasoning, one cached DAG.
#   snakemake --cores all results/tiny/rl_eval.json
# Stages live in workflow/rules/<stage>.smk; each rule calls `sedsft <stage>` from src/.


from pathlib import Path


# next to this file, so that `snakemake -s <repo>/Snakefile -d <elsewhere>` finds it too
configfile: Path(workflow.basedir) / "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/diversity.smk"
include: "workflow/rules/rl.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/seeds.smk"
include: "workflow/rules/compare.smk"


rule all:
    default_target: True
    input:
        artifacts.eval_result("rl", "tiny"),
        artifacts.eval_result("sft", "tiny"),
        artifacts.diversity_summary("sft", "tiny"),
