# An experiment over its seeds (config `seeds`): results/{exp}/seeds.json, seeds.md and a figure.
# A seed N other than the experiment's own is the run results/{exp}.seed{N}/, whose stages that
# read no `seed` (data prep, the tiny base model, tau) are the experiment's own (owner, common.smk).


rule seeds:
    input:
        sft_eval=seed_run_inputs(lambda run: artifacts.eval_result("sft", run)),
        rl_eval=seed_run_inputs(lambda run: artifacts.eval_result("rl", run)),
        diversity=seed_run_inputs(lambda run: artifacts.diversity_summary("sft", run)),
    output:
        summary=artifacts.seeds_summary(),
        table=artifacts.seeds_table(),
        plot=artifacts.seeds_plot(),
    log:
        artifacts.job_log("seeds"),
    benchmark:
        artifacts.job_timing("seeds")
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=mem_mb("seeds"),
        runtime=runtime("seeds"),
    params:
        settings=seeds_json,
    shell:
        "sedsft seeds --experiment {wildcards.exp} --settings {params.settings:q} --results results"
        " --out-md {output.table} --plot {output.plot} --summary {output.summary} > {log} 2>&1"
