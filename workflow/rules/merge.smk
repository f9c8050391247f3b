rule merge_captions:
    input:
        records=config["input"],
        results=expand(f"{RESULTS}/captions/{{shard}}.jsonl", shard=SHARDS),
        stats=expand(f"{RESULTS}/captions/{{shard}}.stats.json", shard=SHARDS),
    output:
        captions=config["output"],
        provenance=str(provenance.provenance_path(config["output"])),
    params:
        settings=settings.merge_settings(config),
        frames_dir=f"{RESULTS}/frames",
    log:
        f"{RESULTS}/logs/merge_captions.log",
    # streams files for seconds: not worth a cluster queue
    localrule: True
    conda:
        "../../envs/frames.yaml"
    script:
        "../scripts/merge_captions.py"
