rule merge_captions:
    input:
        # the records as this build's sync saw the input (never an input edited while it runs)
        index=str(shards.index_file(SHARD_DIR)),
        # caption results with the long videos' summaries (vidcap.summary)
        results=expand(merged_results(), shard=SHARDS),
        stats=expand(f"{RESULTS}/captions/{{shard}}.stats.json", shard=SHARDS),
    output:
        captions=OUTPUT,
        provenance=PROVENANCE,
    log:
        f"{RESULTS}/logs/merge_captions.log",
    # streams files for seconds: not worth a cluster queue
    localrule: True
    conda:
        "../../envs/frames.yaml"
    resources:
        attempt=attempt_number,
    params:
        settings=settings.merge_settings(config),
        frames_dir=f"{RESULTS}/frames",
        store_dir=f"{RESULTS}/store",
    script:
        "../scripts/merge_captions.py"
