# Stage 2: SED-SFT. tau is calibrated from the base model first, as its own artifact.


rule threshold:
    input:
        base=base_model_input,
        val="results/{exp}/data/sft_val.parquet",
    output:
        "results/{exp}/sft/threshold.json",
    log:
        "results/{exp}/logs/threshold.log",
    benchmark:
        "results/{exp}/benchmarks/threshold.tsv"
    conda:
        CONDA_ENV
    threads: cpus("threshold", 2)
    resources:
        gpu=gpus("threshold"),
        mem_mb=mem_mb("threshold"),
        runtime=runtime("threshold"),
    params:
        settings=stage_json("threshold"),
        base=base_model,
        gpus=gpus("threshold"),
    shell:
        "sedsft threshold --experiment {wildcards.exp} --settings {params.settings:q}"
        " --base {params.base:q} --val {input.val} --gpus {params.gpus} --summary {output} > {log} 2>&1"


rule sft:
    input:
        base=base_model_input,
        train="results/{exp}/data/sft_train.parquet",
        # tau comes from the base model: shared along `extends` like the base model itself
        threshold=lambda w: f"results/{owner(w.exp, 'threshold')}/sft/threshold.json",
    output:
        model=directory("results/{exp}/sft/model"),
        summary="results/{exp}/sft/train.json",
        metrics="results/{exp}/sft/metrics.jsonl",
    log:
        "results/{exp}/logs/sft.log",
    benchmark:
        "results/{exp}/benchmarks/sft.tsv"
    conda:
        CONDA_ENV
    threads: cpus("sft", 2)
    resources:
        gpu=gpus("sft"),
        mem_mb=mem_mb("sft"),
        runtime=runtime("sft"),
    params:
        settings=stage_json("sft"),
        base=base_model,
        launcher=sft_launcher,
        gpus=gpus("sft"),
    shell:
        "{params.launcher} sft --experiment {wildcards.exp} --settings {params.settings:q}"
        " --base {params.base:q} --train {input.train} --threshold {input.threshold}"
        " --out-dir {output.model} --work-dir results/{wildcards.exp}/sft/checkpoints --metrics {output.metrics}"
        " --gpus {params.gpus} --summary {output.summary} > {log} 2>&1"
