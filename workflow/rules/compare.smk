# Several experiments side by side (config `comparisons`): results/compare/{name}.md, the table
# and deltas, with PNG plots flagged for `snakemake --report`.

# Helpers: common.smk (comparisons).


rule compare:
    input:
        sft_eval=comparison_inputs("sft_eval.json"),
        rl_eval=comparison_inputs("rl_eval.json"),
        diversity=comparison_inputs("sft/diversity.json"),
        sft_train=comparison_inputs("sft/train.json"),
        sft_metrics=comparison_inputs("sft/metrics.jsonl"),
        rl_train=comparison_inputs("rl/train.json"),
    output:
        table=compare_report("results/compare/{name}.md", "table (Markdown)"),
        pass_at_k_plot=compare_report("results/compare/{name}_pass_at_k.png", "pass@k"),
        diversity_plot=compare_report("results/compare/{name}_diversity.png", "diversity"),
        training_plot=compare_report("results/compare/{name}_training.png", "training"),
        summary="results/compare/{name}.json",
    log:
        "results/compare/logs/compare_{name}.log",
    benchmark:
        "results/compare/benchmarks/compare_{name}.tsv"
    wildcard_constraints:
        name="[A-Za-z0-9][A-Za-z0-9_.-]*",
    conda:
        CONDA_ENV
    threads: 1
    params:
        settings=comparison_json,
    shell:
        "sedsft compare --experiment {wildcards.name} --settings {params.settings:q} --results results"
        " --out-md {output.table} --pass-at-k-plot {output.pass_at_k_plot}"
        " --diversity-plot {output.diversity_plot} --training-plot {output.training_plot}"
        " --summary {output.summary} > {log} 2>&1"
