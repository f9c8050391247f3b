rule summarize_shard:
    input:
        captions=f"{RESULTS}/captions/{{shard}}.jsonl",
        # the records' own prompts (keys.prompt), which their summaries answer
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
        # derived caption-set entries: every summary job starts an engine (its Slurm partition reads this)
        **settings.derived_entries_input(config, f"{SHARD_DIR}/{{shard}}.jsonl"),
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
