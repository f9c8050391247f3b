REPORT_DIR = f"{RESULTS}/report"


def report_settings():
    """What the report shows besides the output file: model, prompt and the frame/sampling settings."""
    return {
        "model": config["model"],
        "prompt": config["prompt"],
        "system_prompt": config["system_prompt"],
        "keys": config["keys"],
        "shards": config["shards"],
        "frames": frame_params(),
        "sampling": config["sampling"],
        "engine": {k: v for k, v in config["engine"].items() if k != "env"},
        "gallery_sample": config.get("gallery_sample", 48),
    }


rule build_report:
    input:
        records=config["input"],
        captions=config["output"],
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
    params:
        settings=report_settings(),
        results=RESULTS,
    log:
        f"{RESULTS}/logs/build_report.log",
    conda:
        "../../envs/frames.yaml"
    script:
        "../scripts/report_build.py"
