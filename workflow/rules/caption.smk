rule caption_shard:
    input:
        **frames_store(),
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
        manifest=f"{RESULTS}/frames/{{shard}}.json",
    output:
        result=f"{RESULTS}/captions/{{shard}}.jsonl",
        stats=f"{RESULTS}/captions/{{shard}}.stats.json",
    log:
        f"{RESULTS}/logs/caption_shard/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption_shard/{{shard}}.tsv"
    conda:
        "../../envs/caption.yaml"
    threads: config["engine"]["threads"]
    resources:
        gpu=settings.caption_gpus(config),
        # Snakemake's try number, for the job (script: objects have no `attempt`); no scheduler counts it
        attempt=lambda wildcards, attempt: attempt,
    params:
        # what a caption depends on; engine sizing comes from vidcap.settings in the job (no reruns)
        settings=settings.caption_params(config),
    script:
        "../scripts/caption_shard.py"
