# Stage 2: SED-SFT. tau is calibrated from the base model first, as its own artifact.


rule threshold:
    input:
        base=base_model_input,
        val=sft_data_file("val"),
    output:
        artifacts.threshold(),
    log:
        artifacts.job_log("threshold"),
    benchmark:
        artifacts.job_timing("threshold")
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
        train=sft_data_file("train"),
        # tau comes from the base model: shared along `extends` like the base model itself
        threshold=lambda w: artifacts.threshold(owner(w.exp, "threshold")),
    output:
        model=directory(artifacts.model("sft")),
        summary=artifacts.train_summary("sft"),
        metrics=artifacts.sft_metrics(),
    log:
        artifacts.job_log("sft"),
    benchmark:
        artifacts.job_timing("sft")
    conda:
        CONDA_ENV
    threads: cpus("sft", 2)
    resources:
        gpu=gpus("sft"),
        mem_mb=mem_mb("sft"),
        runtime=runtime("sft"),
        tracker=tracker,
    params:
        settings=stage_json("sft"),
        base=base_model,
        launcher=sft_launcher,
        gpus=gpus("sft"),
    shell:
        "{params.launcher} sft --experiment {wildcards.exp} --settings {params.settings:q}"
        " --base {params.base:q} --train {input.train} --threshold {input.threshold}"
        " --out-dir {output.model} --work-dir results/{wildcards.exp}/sft/checkpoints --metrics {output.metrics}"
        " --gpus {params.gpus} --tracker {resources.tracker}"
        " --summary {output.summary} > {log} 2>&1"
