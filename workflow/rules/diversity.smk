# Stage 3: diversity of a model's samples (N per prompt at temperature 1), with plots.
# Its input helpers are in common.smk.


rule diversity:
    input:
        model=stage_model_input,
        prompts=diversity_prompts_input,
        benchmarks=diversity_benchmarks_input,
    output:
        summary=artifacts.diversity_summary(),
        samples=artifacts.diversity_samples(),
        per_prompt=artifacts.diversity_per_prompt(),
        pass_at_k_plot=artifacts.diversity_plot("pass_at_k"),
        metrics_plot=artifacts.diversity_plot("metrics"),
    log:
        artifacts.job_log("diversity_{stage}"),
    benchmark:
        artifacts.job_timing("diversity_{stage}")
    wildcard_constraints:
        stage="base|sft|rl",
    conda:
        CONDA_ENV
    threads: cpus("diversity", 2)
    resources:
        gpu=gpus("diversity"),
        mem_mb=mem_mb("diversity"),
        runtime=runtime("diversity"),
    params:
        settings=stage_json("diversity"),
        model=stage_model,
        prompts=lambda w, input: f"--prompts {input.prompts}" if input.prompts else "",
        benchmarks=lambda w, input: f"--benchmarks {input.benchmarks}" if input.benchmarks else "",
        gpus=gpus("diversity"),
    shell:
        "sedsft diversity --experiment {wildcards.exp} --settings {params.settings:q}"
        " --model {params.model:q} {params.prompts} {params.benchmarks} --samples {output.samples}"
        " --per-prompt {output.per_prompt} --pass-at-k-plot {output.pass_at_k_plot}"
        " --metrics-plot {output.metrics_plot} --label {wildcards.exp}/{wildcards.stage}"
        " --gpus {params.gpus} --summary {output.summary} > {log} 2>&1"
