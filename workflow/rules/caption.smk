rule caption_shard:
    input:
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
        manifest=f"{RESULTS}/frames/{{shard}}.json",
        **frames_store(),
    output:
        result=f"{RESULTS}/captions/{{shard}}.jsonl",
        stats=f"{RESULTS}/captions/{{shard}}.stats.json",
    params:
        # what a caption depends on; engine sizing comes from vidcap.settings in the job (no reruns)
        settings=settings.caption_params(config),
    log:
        f"{RESULTS}/logs/caption_shard/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption_shard/{{shard}}.tsv"
    threads: config["engine"]["threads"]
    resources:
        gpu=settings.caption_gpus(config),
    conda:
        "../../envs/caption.yaml"
    script:
        "../scripts/caption_shard.py"
