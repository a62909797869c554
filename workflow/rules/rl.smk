# Stage 4: GRPO with TRL from the SFT model (vLLM rollouts on GPUs).


rule rl:
    input:
        model="results/{exp}/sft/model",
        prompts="results/{exp}/data/rl_prompts.parquet",
    output:
        model=directory("results/{exp}/rl/model"),
        summary="results/{exp}/rl/train.json",
    log:
        "results/{exp}/logs/rl.log",
    benchmark:
        "results/{exp}/benchmarks/rl.tsv"
    conda:
        CONDA_ENV
    threads: cpus("rl", 2)
    resources:
        gpu=gpus("rl"),
        mem_mb=mem_mb("rl"),
        runtime=runtime("rl"),
    params:
        settings=stage_json("rl"),
        launcher=rl_launcher,
        gpus=gpus("rl"),
    shell:
        "{params.launcher} rl --experiment {wildcards.exp} --settings {params.settings:q}"
        " --model {input.model} --prompts {input.prompts} --out-dir {output.model}"
        " --work-dir results/{wildcards.exp}/rl/checkpoints --gpus {params.gpus}"
        " --summary {output.summary} > {log} 2>&1"
