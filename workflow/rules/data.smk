# Stage 1: data prep. The tiny task and its base model, SFT tokens, RL prompts, benchmarks.
# Retried: a Hub download can fail for a moment (Snakemake clears a job's outputs before each try).


rule tiny_task:
    output:
        pretrain=artifacts.tiny_task_file("pretrain"),
        sft=artifacts.tiny_task_file("sft"),
        rl=artifacts.tiny_task_file("rl"),
        test=artifacts.tiny_task_file("test"),
        summary=artifacts.tiny_task_summary(),
    log:
        artifacts.job_log("tiny_task"),
    benchmark:
        artifacts.job_timing("tiny_task")
    retries: 2
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=mem_mb("tiny_task"),
        runtime=runtime("tiny_task"),
    params:
        settings=stage_json("tiny_task"),
    shell:
        "sedsft tiny-task --experiment {wildcards.exp} --settings {params.settings:q}"
        " --out-dir $(dirname {output.test}) --summary {output.summary} > {log} 2>&1"


rule base_model:
    input:
        unpack(tiny_task_inputs),
    output:
        model=directory(artifacts.model("base")),
        summary=artifacts.base_model_summary(),
    log:
        artifacts.job_log("base_model"),
    benchmark:
        artifacts.job_timing("base_model")
    retries: 2
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=mem_mb("base_model"),
        runtime=runtime("base_model"),
        tracker=tracker,
    params:
        settings=stage_json("base_model"),
        task_dir=lambda w, input: f"--task-dir $(dirname {input.pretrain})" if "pretrain" in input.keys() else "",
    shell:
        "sedsft base-model --experiment {wildcards.exp} --settings {params.settings:q}"
        " {params.task_dir} --out-dir {output.model} --tracker {resources.tracker}"
        " --summary {output.summary} > {log} 2>&1"


rule sft_data:
    input:
        tokenizer=base_model_input,
        source=data_source_input("sft"),
    output:
        train=artifacts.sft_data("train"),
        val=artifacts.sft_data("val"),
        summary=artifacts.sft_data_summary(),
    log:
        artifacts.job_log("sft_data"),
    benchmark:
        artifacts.job_timing("sft_data")
    retries: 2
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=mem_mb("sft_data"),
        runtime=runtime("sft_data"),
    params:
        settings=stage_json("sft_data"),
        source=lambda w: data_source(w, "sft"),
        tokenizer=base_model,
    shell:
        "sedsft sft-data --experiment {wildcards.exp} --settings {params.settings:q}"
        " --source {params.source:q} --tokenizer {params.tokenizer:q}"
        " --train-out {output.train} --val-out {output.val} --summary {output.summary} > {log} 2>&1"


rule rl_prompts:
    input:
        source=data_source_input("rl"),
    output:
        prompts=artifacts.rl_prompts(),
        summary=artifacts.rl_prompts_summary(),
    log:
        artifacts.job_log("rl_prompts"),
    benchmark:
        artifacts.job_timing("rl_prompts")
    retries: 2
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=mem_mb("rl_prompts"),
        runtime=runtime("rl_prompts"),
    params:
        settings=stage_json("rl_prompts"),
        source=lambda w: data_source(w, "rl"),
    shell:
        "sedsft rl-prompts --experiment {wildcards.exp} --settings {params.settings:q}"
        " --source {params.source:q} --out {output.prompts} --summary {output.summary} > {log} 2>&1"


rule benchmark_data:
    input:
        tiny_test=lambda w: [tiny_task_file(w.exp, "test")] if w.bench == "tiny" else [],
    output:
        problems=artifacts.bench_problems(),
        summary=artifacts.bench_summary(),
    log:
        artifacts.job_log("benchmark_data_{bench}"),
    benchmark:
        artifacts.job_timing("benchmark_data_{bench}")
    retries: 2
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=mem_mb("benchmark_data"),
        runtime=runtime("benchmark_data"),
    params:
        settings=stage_json("benchmark_data"),
        tiny_test=lambda w, input: f"--tiny-test {input.tiny_test}" if input.tiny_test else "",
    shell:
        "sedsft benchmark-data --experiment {wildcards.exp} --settings {params.settings:q}"
        " --name {wildcards.bench} {params.tiny_test} --out {output.problems}"
        " --summary {output.summary} > {log} 2>&1"
