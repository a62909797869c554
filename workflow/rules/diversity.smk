# Stage 3: diversity of a model's samples (N per prompt at temperature 1), with plots.
# Its input helpers are in common.smk.


rule diversity:
    input:
        model=stage_model_input,
        prompts=diversity_prompts_input,
        benchmarks=diversity_benchmarks_input,
    output:
        summary="results/{exp}/{stage}/diversity.json",
        samples="results/{exp}/{stage}/diversity_samples.jsonl",
        per_prompt="results/{exp}/{stage}/diversity_per_prompt.jsonl",
        pass_at_k_plot="results/{exp}/{stage}/diversity_pass_at_k.png",
        metrics_plot="results/{exp}/{stage}/diversity_metrics.png",
    log:
        "results/{exp}/logs/diversity_{stage}.log",
    benchmark:
        "results/{exp}/benchmarks/diversity_{stage}.tsv"
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
