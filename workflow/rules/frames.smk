rule extract_frames:
    input:
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
    output:
        manifest=f"{RESULTS}/frames/{{shard}}.json",
        **frames_store(),
    params:
        settings=frames_settings_of,
    log:
        f"{RESULTS}/logs/extract_frames/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_frames/{{shard}}.tsv"
    threads: config["frames"]["threads"]
    conda:
        "../../envs/frames.yaml"
    script:
        "../scripts/extract_frames.py"
