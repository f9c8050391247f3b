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
    threads: settings.frames_job_threads(config)
    resources:
        # Snakemake's try number: a decode timeout is the node's on the first, the video's on a retry
        attempt=attempt_number,
    params:
        **staging(staged=staged_urls_of),
        # what the frames depend on (a change reruns the job); the job adds the run-only settings
        settings=frames_params_of,
    script:
        "../scripts/extract_frames.py"
