rule merge_captions:
    input:
        records=config["input"],
        results=expand(f"{RESULTS}/captions/{{shard}}.jsonl", shard=SHARDS),
    output:
        captions=config["output"],
    params:
        settings=merge_settings(),
    log:
        f"{RESULTS}/logs/merge_captions.log",
    conda:
        "../../envs/frames.yaml"
    script:
        "../scripts/merge_captions.py"
