rule caption_shard:
    input:
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
        manifest=f"{RESULTS}/frames/{{shard}}.json",
        **frames_store(),
    output:
        result=f"{RESULTS}/captions/{{shard}}.jsonl",
        stats=f"{RESULTS}/captions/{{shard}}.stats.json",
    params:
        settings=caption_settings(),
    log:
        f"{RESULTS}/logs/caption_shard/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption_shard/{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    threads: config["engine"]["threads"]
    resources:
        # GPUs this job locks (vidcap.gpus); none when a vllm serve elsewhere does the work
        gpu=0 if config["engine"].get("backend") == "server" else config["engine"]["tensor_parallel_size"],
    conda:
        "../../envs/caption.yaml"
    script:
        "../scripts/caption_shard.py"
