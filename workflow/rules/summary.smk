rule summarize_shard:
    # the captions; the records' own prompts (keys.prompt), which their summaries answer; with derived
    # caption-set entries the records again as `derived_entries` (every such job starts an engine: the
    # Slurm profile's partition expression reads that name)
    input:
        **settings.derived_entries_input(config, f"{SHARD_DIR}/{{shard}}.jsonl"),
        captions=f"{RESULTS}/captions/{{shard}}.jsonl",
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
    output:
        summaries=f"{RESULTS}/summaries/{{shard}}.jsonl",
    log:
        main=f"{RESULTS}/logs/summarize_shard/{{shard}}.log",
        engine=f"{RESULTS}/logs/summarize_shard/{{shard}}.vllm.log",
    benchmark:
        f"{RESULTS}/benchmarks/summarize_shard/{{shard}}.tsv"
    conda:
        "../../envs/caption.yaml"
    threads: config["engine"]["threads"]
    resources:
        # an engine starts only for a shard with a record of two or more windows: read from the captions
        # when the job is scheduled, so the other shards' summary jobs hold no GPU (a line copy)
        gpu=settings.summary_gpus(config),
        attempt=attempt_number,
    params:
        # only what a summary or derived entry depends on: editing summary_prompt or a derived entry reruns
        # this and the merge, no caption job
        settings=settings.summary_params(config),
    script:
        "../scripts/summarize_shard.py"
