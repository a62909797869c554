# Several experiments side by side (config `comparisons`): results/compare/{name}.md, the table
# and deltas, with PNG plots flagged for `snakemake --report`.

# Helpers: common.smk (comparisons).


rule compare:
    input:
        sft_eval=comparison_inputs(artifacts.eval_result("sft")),
        rl_eval=comparison_inputs(artifacts.eval_result("rl")),
        diversity=comparison_inputs(artifacts.diversity_summary("sft")),
        sft_train=comparison_inputs(artifacts.train_summary("sft")),
        sft_metrics=comparison_inputs(artifacts.sft_metrics()),
        rl_train=comparison_inputs(artifacts.train_summary("rl")),
        seed_sft_eval=comparison_seed_inputs(lambda run: artifacts.eval_result("sft", run)),
        seed_rl_eval=comparison_seed_inputs(lambda run: artifacts.eval_result("rl", run)),
        seed_diversity=comparison_seed_inputs(lambda run: artifacts.diversity_summary("sft", run)),
        seed_graded=comparison_graded_inputs,
    output:
        table=compare_report(artifacts.comparison_table(), "table (Markdown)"),
        pass_at_k_plot=compare_report(artifacts.comparison_plot("pass_at_k"), "pass@k"),
        diversity_plot=compare_report(artifacts.comparison_plot("diversity"), "diversity"),
        training_plot=compare_report(artifacts.comparison_plot("training"), "training"),
        seeds_plot=compare_report(artifacts.comparison_plot("seeds"), "seeds"),
        summary=artifacts.comparison_summary(),
    log:
        artifacts.comparison_log(),
    benchmark:
        artifacts.comparison_timing()
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
        " --seeds-plot {output.seeds_plot}"
        " --summary {output.summary} > {log} 2>&1"


# The SFT models' diversity only, over seeds (results/compare/sft_diversity/{name}.md): the method's
# direct claim, for a real model whose RL and evaluation would cost far more than its SFT.
rule compare_diversity:
    input:
        diversity=comparison_seed_inputs(lambda run: artifacts.diversity_summary("sft", run)),
    output:
        table=compare_report(artifacts.diversity_comparison_table(), "SFT diversity over seeds (Markdown)"),
        plot=compare_report(artifacts.diversity_comparison_plot(), "SFT diversity over seeds"),
        summary=artifacts.diversity_comparison_summary(),
    log:
        artifacts.comparison_log(stage="compare_diversity"),
    benchmark:
        artifacts.comparison_timing(stage="compare_diversity")
    wildcard_constraints:
        name="[A-Za-z0-9][A-Za-z0-9_.-]*",
    conda:
        CONDA_ENV
    threads: 1
    params:
        settings=comparison_json,
    shell:
        "sedsft compare-diversity --experiment {wildcards.name} --settings {params.settings:q} --results results"
        " --out-md {output.table} --plot {output.plot} --summary {output.summary} > {log} 2>&1"
