rule extract_frames:
    input:
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
        # Snakemake gives scripts no attempt number: a resource function can take it
        attempt=lambda wildcards, attempt: attempt,
    params:
        settings=frames_settings_of,
    script:
        "../scripts/extract_frames.py"
