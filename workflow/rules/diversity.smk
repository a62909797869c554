# Stage 3: diversity of a model's samples (N per prompt at temperature 1).


rule diversity:
    input:
        model="results/{exp}/{stage}/model",
        prompts="results/{exp}/data/rl_prompts.parquet",
    output:
        summary="results/{exp}/{stage}/diversity.json",
        samples="results/{exp}/{stage}/diversity_samples.jsonl",
    log:
        "results/{exp}/logs/diversity_{stage}.log",
    benchmark:
        "results/{exp}/benchmarks/diversity_{stage}.tsv"
    conda:
        CONDA_ENV
    threads: 2
    params:
        settings=stage_json("diversity"),
    shell:
        "sedsft diversity --experiment {wildcards.exp} --settings {params.settings:q}"
        " --model {input.model} --prompts {input.prompts} --samples {output.samples}"
        " --summary {output.summary} > {log} 2>&1"
