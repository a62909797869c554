# Stage 4: GRPO with TRL from the SFT model (vLLM rollouts on GPUs).


rule rl:
    input:
        model=artifacts.model("sft"),
        prompts=rl_prompts_file,
    output:
        model=directory(artifacts.model("rl")),
        summary=artifacts.train_summary("rl"),
    log:
        artifacts.job_log("rl"),
    benchmark:
        artifacts.job_timing("rl")
    conda:
        CONDA_ENV
    threads: cpus("rl", 2)
    resources:
        gpu=gpus("rl"),
        mem_mb=mem_mb("rl"),
        runtime=runtime("rl"),
        tracker=tracker,
    params:
        settings=stage_json("rl"),
        launcher=rl_launcher,
        gpus=gpus("rl"),
    shell:
        "{params.launcher} rl --experiment {wildcards.exp} --settings {params.settings:q}"
        " --model {input.model} --prompts {input.prompts} --out-dir {output.model}"
        " --work-dir results/{wildcards.exp}/rl/checkpoints --gpus {params.gpus}"
        " --tracker {resources.tracker}"
        " --summary {output.summary} > {log} 2>&1"
