# Stage 1: data prep. The tiny task and its base model, SFT tokens, RL prompts, benchmarks.
# Retried: a Hub download can fail for a moment (Snakemake clears a job's outputs before each try).


rule tiny_task:
    output:
        pretrain="results/{exp}/data/tiny/pretrain.jsonl",
        sft="results/{exp}/data/tiny/sft.jsonl",
        rl="results/{exp}/data/tiny/rl.jsonl",
        test="results/{exp}/data/tiny/test.jsonl",
        summary="results/{exp}/data/tiny/summary.json",
    log:
        "results/{exp}/logs/tiny_task.log",
    benchmark:
        "results/{exp}/benchmarks/tiny_task.tsv"
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
        model=directory("results/{exp}/base/model"),
        summary="results/{exp}/base/summary.json",
    log:
        "results/{exp}/logs/base_model.log",
    benchmark:
        "results/{exp}/benchmarks/base_model.tsv"
    retries: 2
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=mem_mb("base_model"),
        runtime=runtime("base_model"),
    params:
        settings=stage_json("base_model"),
        task_dir=lambda w, input: f"--task-dir $(dirname {input.pretrain})" if "pretrain" in input.keys() else "",
    shell:
        "sedsft base-model --experiment {wildcards.exp} --settings {params.settings:q}"
        " {params.task_dir} --out-dir {output.model} --summary {output.summary} > {log} 2>&1"


rule sft_data:
    input:
        tokenizer=base_model_input,
        source=data_source_input("sft"),
    output:
        train="results/{exp}/data/sft_train.parquet",
        val="results/{exp}/data/sft_val.parquet",
        summary="results/{exp}/data/sft_data.json",
    log:
        "results/{exp}/logs/sft_data.log",
    benchmark:
        "results/{exp}/benchmarks/sft_data.tsv"
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
        prompts="results/{exp}/data/rl_prompts.parquet",
        summary="results/{exp}/data/rl_prompts.json",
    log:
        "results/{exp}/logs/rl_prompts.log",
    benchmark:
        "results/{exp}/benchmarks/rl_prompts.tsv"
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
        problems="results/{exp}/data/bench/{bench}.parquet",
        summary="results/{exp}/data/bench/{bench}.json",
    log:
        "results/{exp}/logs/benchmark_data_{bench}.log",
    benchmark:
        "results/{exp}/benchmarks/benchmark_data_{bench}.tsv"
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
