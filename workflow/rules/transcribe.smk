rule transcribe_shard:
    input:
        shard=f"{SHARD_DIR}/{{shard}}.jsonl",
    output:
        result=f"{RESULTS}/transcripts/{{shard}}.jsonl",
    log:
        main=f"{RESULTS}/logs/transcribe_shard/{{shard}}.log",
        engine=f"{RESULTS}/logs/transcribe_shard/{{shard}}.vllm.log",
    benchmark:
        f"{RESULTS}/benchmarks/transcribe_shard/{{shard}}.tsv"
    conda:
        "../../envs/caption.yaml"
    threads: config["engine"]["threads"]
    resources:
        gpu=1,  # one Whisper engine, whatever the caption engine's tensor_parallel_size
        attempt=attempt_number,
    params:
        # what a transcript depends on: the ASR model, language and media paths, no caption setting
        settings=settings.asr_params(config),
    script:
        "../scripts/transcribe_shard.py"
