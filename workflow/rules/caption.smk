rule caption_shard:
    input:
        **frames_store(),
        **transcripts_of_shard(),
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
        manifest=f"{RESULTS}/frames/{{shard}}.json",
    output:
        result=f"{RESULTS}/captions/{{shard}}.jsonl",
        stats=f"{RESULTS}/captions/{{shard}}.stats.json",
    log:
        # vidcap's lines (progress, counts, errors); vLLM's own output goes to the engine log
        main=f"{RESULTS}/logs/caption_shard/{{shard}}.log",
        engine=f"{RESULTS}/logs/caption_shard/{{shard}}.vllm.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption_shard/{{shard}}.tsv"
    conda:
        "../../envs/caption.yaml"
    threads: config["engine"]["threads"]
    resources:
        gpu=settings.caption_gpus(config),
        # Snakemake's try number, for frames extracted again (a timeout is the node's on the first)
        attempt=attempt_number,
    params:
        # what a caption depends on; engine sizing comes from vidcap.settings in the job (no reruns)
        settings=settings.caption_params(config),
    script:
        "../scripts/caption_shard.py"
