rule extract_frames:
    input:
        # media on object storage (docs/object-storage.md), staged into .snakemake/storage/
        **staging(media=staged_media),
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
    output:
        **frames_store(),
        manifest=f"{RESULTS}/frames/{{shard}}.json",
    log:
        f"{RESULTS}/logs/extract_frames/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_frames/{{shard}}.tsv"
    conda:
        "../../envs/frames.yaml"
    threads: config["frames"]["threads"]
    resources:
        # Snakemake's try number, for the job (script: objects have no `attempt`); no scheduler counts it
        attempt=lambda wildcards, attempt: attempt,
    params:
        **staging(staged=staged_urls_of),
        settings=frames_settings_of,
    script:
        "../scripts/extract_frames.py"
