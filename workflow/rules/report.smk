REPORT_DIR = f"{RESULTS}/report"


rule build_report:
    input:
        # the records as this build's sync saw the input (never an input edited while it runs)
        index=str(shards.index_file(SHARD_DIR)),
        captions=OUTPUT,
        manifests=expand(f"{RESULTS}/frames/{{shard}}.json", shard=SHARDS),
    output:
        summary=report(
            f"{REPORT_DIR}/summary.html",
            caption="../report/summary.rst",
            category="Build summary",
        ),
        gallery=report(
            f"{REPORT_DIR}/gallery.html",
            caption="../report/gallery.rst",
            category="Caption gallery",
        ),
        hist_frames=report(
            f"{REPORT_DIR}/hist_frames.svg",
            caption="../report/histogram.rst",
            category="Histograms",
        ),
        hist_prompt_tokens=report(
            f"{REPORT_DIR}/hist_prompt_tokens.svg",
            caption="../report/histogram.rst",
            category="Histograms",
        ),
        hist_output_tokens=report(
            f"{REPORT_DIR}/hist_output_tokens.svg",
            caption="../report/histogram.rst",
            category="Histograms",
        ),
        hist_caption_words=report(
            f"{REPORT_DIR}/hist_caption_words.svg",
            caption="../report/histogram.rst",
            category="Histograms",
        ),
    log:
        f"{RESULTS}/logs/build_report.log",
    # a few seconds of reading and drawing: not worth a cluster queue
    localrule: True
    conda:
        "../../envs/frames.yaml"
    resources:
        attempt=attempt_number,
    params:
        # read when present, not inputs: a deleted benchmark or stats file must not rerun a GPU job
        caption_stats=expand(f"{RESULTS}/captions/{{shard}}.stats.json", shard=SHARDS),
        benchmarks=expand(
            [rules.extract_frames.benchmark, rules.caption_shard.benchmark],
            shard=SHARDS,
        ),
        settings=settings.report_settings(config),
    script:
        "../scripts/build_report.py"
