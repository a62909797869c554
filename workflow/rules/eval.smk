# Stage 5: evaluation. Generation and grading are separate cached steps per benchmark.
# {stage}: sft, rl, or base (the base model before SFT: results/{exp}/base_eval.json, on demand).


rule generate:
    input:
        model=stage_model_input,
        problems=bench_problems_file,
    output:
        generations=artifacts.generations(),
        summary=artifacts.generation_summary(),
    log:
        artifacts.job_log("generate_{stage}_{bench}"),
    benchmark:
        artifacts.job_timing("generate_{stage}_{bench}")
    wildcard_constraints:
        stage="base|sft|rl",
    # seeded and writing only its own outputs: a retry (after a lost node, say) is safe
    retries: 1
    conda:
        CONDA_ENV
    threads: cpus("generate", 1)
    resources:
        gpu=gpus("generate"),
        mem_mb=mem_mb("generate"),
        runtime=runtime("generate"),
    params:
        settings=lambda w: json.dumps(C.generate_settings(experiment(w.exp), w.bench), sort_keys=True),
        model=stage_model,
        gpus=gpus("generate"),
    shell:
        "sedsft generate --experiment {wildcards.exp} --settings {params.settings:q}"
        " --model {params.model:q} --benchmark {input.problems} --out {output.generations}"
        " --gpus {params.gpus} --summary {output.summary} > {log} 2>&1"


rule grade:
    input:
        generations=artifacts.generations(),
        problems=bench_problems_file,
    output:
        graded=artifacts.graded(),
        summary=artifacts.grading_summary(),
    log:
        artifacts.job_log("grade_{stage}_{bench}"),
    benchmark:
        artifacts.job_timing("grade_{stage}_{bench}")
    wildcard_constraints:
        stage="base|sft|rl",
    retries: 1
    conda:
        CONDA_ENV
    # a pool of grading_workers processes
    threads: lambda w: experiment(w.exp)["eval"]["grading_workers"]
    resources:
        mem_mb=mem_mb("grade"),
        runtime=runtime("grade"),
    params:
        settings=stage_json("grade"),
    shell:
        "sedsft grade --experiment {wildcards.exp} --settings {params.settings:q}"
        " --generations {input.generations} --benchmark {input.problems} --out {output.graded}"
        " --summary {output.summary} > {log} 2>&1"


rule eval_report:
    input:
        model=stage_model_input,
        graded=eval_inputs(artifacts.graded()),
        generation=eval_inputs(artifacts.generation_summary()),
        bench=bench_summaries,
        # RL results carry the diversity of the SFT model they started from (the paper's link)
        diversity=lambda w: [artifacts.diversity_summary("sft")] if w.stage == "rl" else [],
        # ... and the SFT model's scores, so the headline file shows what RL added
        baseline=lambda w: [artifacts.eval_result("sft")] if w.stage == "rl" else [],
    output:
        result=artifacts.eval_result(),
        table=artifacts.eval_table(),
    log:
        artifacts.job_log("eval_report_{stage}"),
    benchmark:
        artifacts.job_timing("eval_report_{stage}")
    wildcard_constraints:
        stage="base|sft|rl",
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=mem_mb("eval_report"),
        runtime=runtime("eval_report"),
    params:
        model=stage_model,
        graded=lambda w, input: " ".join(f"{b}={p}" for b, p in zip(benchmarks(w.exp), input.graded)),
        generation=lambda w, input: " ".join(f"{b}={p}" for b, p in zip(benchmarks(w.exp), input.generation)),
        bench=lambda w, input: " ".join(f"{b}={p}" for b, p in zip(benchmarks(w.exp), input.bench)),
        diversity=lambda w, input: f"--diversity {input.diversity}" if input.diversity else "",
        baseline=lambda w, input: f"--baseline {input.baseline}" if input.baseline else "",
    shell:
        "sedsft eval-report --experiment {wildcards.exp} --settings '{{}}' --model {params.model:q}"
        " --label {wildcards.stage} --graded {params.graded} --generation-meta {params.generation}"
        " --bench-meta {params.bench} {params.diversity} {params.baseline} --out-md {output.table} --summary {output.result} > {log} 2>&1"
