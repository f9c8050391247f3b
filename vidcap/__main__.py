"""Command line: ``python -m vidcap init DIR``, ``python -m vidcap status``, ``python -m vidcap plan``, ``python -m vidcap demo DIR``,
``python -m vidcap stats OUTPUT``, ``python -m vidcap export OUTPUT --to FORMAT``, ``python -m vidcap audit OUTPUT``,
``python -m vidcap diff OLD NEW``, ``python -m vidcap errors``, ``python -m vidcap retry``,
``python -m vidcap config-doc``, ``python -m vidcap tiny-model DIR``, ``python -m vidcap cache prune``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidcap", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vidcap {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_init_command(sub)
    _add_status_command(sub)
    _add_plan_command(sub)
    tiny = sub.add_parser(
        "tiny-model",
        help="build a random-weight Qwen-VL checkpoint (gibberish captions): "
        "tiny for tests, or a real model's architecture for GPU speed measurements",
    )
    tiny.add_argument("dir")
    tiny.add_argument(
        "--arch",
        choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen2_5_omni", "whisper"],
        default="qwen2_vl",
    )
    tiny.add_argument(
        "--size",
        default="tiny",
        help="tiny (default), or a published model's dimensions: "
        "7b for qwen2_vl, qwen2_5_vl and qwen2_5_omni (its thinker), 8b for qwen3_vl (about 16-18 GB of bf16 weights, "
        "written shard by shard)",
    )
    tiny.add_argument(
        "--config-only", action="store_true", help="config, tokenizer and processor, no weights"
    )
    errors = sub.add_parser(
        "errors",
        help="error records of a finished build, their reasons, and the "
        "snakemake command that re-captions only their shards",
    )
    errors.add_argument(
        "output", nargs="?", help="the workflow's output file (default: the config's `output`)"
    )
    _add_build_config_options(errors)
    _add_retry_command(sub)
    _add_export_command(sub)
    demo = sub.add_parser("demo", help="make synthetic demo videos and a records.json")
    demo.add_argument("dir")
    stats = sub.add_parser(
        "stats", help="summarize a finished build's output file: status counts, error reasons, lengths"
    )
    stats.add_argument("output", help="the workflow's output file (.json or .jsonl)")
    stats.add_argument(
        "--results", help="the workflow's results folder: adds wall time per step from its benchmark files"
    )
    stats.add_argument("--model", help="model id or folder to name in the summary")
    stats.add_argument(
        "--caption-key", default="caption", help="record key holding the caption (config keys.caption)"
    )
    _add_quality_commands(sub)
    _add_config_doc_command(sub)
    _add_cache_command(sub)
    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args)
    except Exception as exc:
        from vidcap.cli_errors import USAGE_ERROR, user_error_message

        message = user_error_message(exc)
        if message is None:  # a bug: its traceback helps
            raise
        print(f"vidcap {args.command}: {message}", file=sys.stderr)
        return USAGE_ERROR


def _version() -> str:
    """The installed distribution's version; a source checkout run without installing has only its own."""
    from importlib import metadata

    try:
        return metadata.version("vidcap")
    except metadata.PackageNotFoundError:
        from vidcap import __version__

        return __version__


def _add_build_config_options(parser) -> None:
    """The build's config as the Snakefile reads it: config/config.yaml, then these (vidcap.config.build_config)."""
    parser.add_argument(
        "--configfile", action="append", default=[], help="the build's config file(s), as given to snakemake"
    )
    parser.add_argument(
        "--config", nargs="+", default=[], metavar="KEY=VALUE", help="the build's --config items"
    )


def _add_init_command(sub) -> None:
    init = sub.add_parser(
        "init",
        help="write a commented starter config for your data: input, model, and a shard count "
        "suggested from the record count (docs/sizing.md)",
    )
    init.add_argument("dir", help="folder to write config.yaml into (made if missing)")
    init.add_argument(
        "--input", help="your records file (.json array or .jsonl); counted for the shard count"
    )
    init.add_argument("--model", help="model id or folder (default: the schema's)")
    init.add_argument("--gpus", type=int, default=1, help="GPUs the build will use (default 1)")
    from vidcap.sizing import DEFAULT_RATE

    init.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help="records/s per GPU, as a pilot build's `vidcap status` shows (default 1: 7B on short clips)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing config.yaml")


def _add_status_command(sub) -> None:
    status = sub.add_parser(
        "status",
        help="records captioned out of the total, records/s and an ETA of a running or finished build "
        "(reads its files only: works while it runs, also under Slurm)",
    )
    _add_build_config_options(status)
    status.add_argument(
        "--directory", "-d", help="the build's working directory, as given to snakemake (default: here)"
    )


def _add_plan_command(sub) -> None:
    plan = sub.add_parser(
        "plan",
        help="before a build: records, video hours, vision and prompt tokens, frame-cache disk, GPU-hours "
        "and records already stored (no GPU, no decoding beyond the probe: docs/plan.md)",
    )
    _add_build_config_options(plan)
    plan.add_argument("--rate", type=float, help="records (requests) per second per engine, from a pilot")
    plan.add_argument(
        "--tokens-per-second", type=float, help="prompt tokens per second per engine (not --rate)"
    )
    plan.add_argument(
        "--exact", type=int, default=20000, help="plan every record up to this many; above, a sample"
    )
    plan.add_argument("--sample", type=int, help="records in that sample (default 2000)")
    plan.add_argument("--json", action="store_true", help="the figures as JSON")


def _run_status(args) -> int:
    import os

    from vidcap import config
    from vidcap.progress import build_progress, format_progress

    files = [os.path.abspath(path) for path in args.configfile]  # given from here, read from there
    if args.directory:
        os.chdir(args.directory)
    print(format_progress(build_progress(config.build_config(files, args.config))))
    return 0


def _dispatch(parser, args) -> int:
    if args.command == "init":
        from vidcap.init_config import write_starter_config

        print(write_starter_config(args.dir, args.input, args.model, args.gpus, args.rate, force=args.force))
    elif args.command == "status":
        return _run_status(args)
    elif args.command == "plan":
        from vidcap.plan import main_plan

        return main_plan(args)
    elif args.command == "tiny-model":
        from vidcap.tiny_model import build_tiny_model

        try:
            out = build_tiny_model(args.dir, args.arch, args.size, config_only=args.config_only)
        except ValueError as exc:
            parser.error(str(exc))
        print(f"{args.size} {args.arch} model (random weights, gibberish captions) in {out}")
    elif args.command == "errors":
        from vidcap import config
        from vidcap.errors import check_same_build, error_shards, format_errors

        cfg = config.build_config(args.configfile, args.config)
        output = check_same_build(cfg, args.output)
        extra = [arg for path in args.configfile for arg in ("--configfile", path)]
        extra += ["--config", *args.config] if args.config else []
        print(format_errors(error_shards(output, cfg["shards"], cfg["keys"]), cfg["results"], extra))
    elif args.command == "demo":
        from vidcap.demo import make_demo

        print(f"demo records: {make_demo(args.dir)}")
    elif args.command == "stats":
        from vidcap.stats import benchmark_files, format_summary, read_benchmarks, summarize_output

        summary = summarize_output(args.output, {"caption": args.caption_key})
        steps = read_benchmarks(benchmark_files(f"{args.results}/benchmarks")) if args.results else None
        print(format_summary(summary, steps, args.model))
    elif args.command in ("audit", "diff"):
        return _run_quality_command(args)
    elif args.command == "retry":
        return _run_retry(args)
    elif args.command == "config-doc":
        from vidcap import config_doc

        if args.output:
            print(f"wrote {config_doc.write(args.output)}")
        else:
            sys.stdout.write(config_doc.render())
    elif args.command == "export":
        return _run_export(args)
    elif args.command == "cache":
        return _run_cache(args)
    return 0


def _add_cache_command(sub) -> None:
    cache = sub.add_parser("cache", help="the frame cache and result store: `cache prune`")
    action = cache.add_subparsers(dest="cache_command", required=True)
    prune = action.add_parser(
        "prune",
        help="remove frame-cache and result-store entries the build's output does not use, and temporary "
        "files of killed jobs (a dry run unless --apply; docs/cache.md)",
    )
    _add_build_config_options(prune)
    prune.add_argument("--apply", action="store_true", help="remove them (default: only say what would go)")
    prune.add_argument(
        "--min-age",
        type=float,
        default=None,
        help="seconds: temporary files younger than this may be a running job's and stay (default 3600)",
    )


def _run_cache(args) -> int:
    from vidcap import config, prune

    cfg = config.build_config(args.configfile, args.config)
    age = prune.DEFAULT_MIN_AGE if args.min_age is None else args.min_age
    plan = prune.plan_prune(cfg["results"], cfg["shards"], age)
    if args.apply:
        prune.apply(plan)
    print(prune.format_plan(plan, args.apply))
    return 0


def _add_config_doc_command(sub) -> None:
    doc = sub.add_parser(
        "config-doc", help="the configuration guide (config/README.md) written from the config schema"
    )
    doc.add_argument("--output", help="write it to this file (config/README.md) instead of printing it")


def _add_retry_command(sub) -> None:
    retry = sub.add_parser(
        "retry",
        help="re-send only a build's error records (frames and caption errors) after fixing their cause, "
        "then re-merge; every other record comes from the result store",
    )
    _add_build_config_options(retry)
    retry.add_argument(
        "--dry-run", action="store_true", help="say which shards hold errors and the command; change nothing"
    )
    retry.add_argument("snakemake_args", nargs="*", help="after --: more snakemake options (e.g. --profile)")


def _run_retry(args) -> int:
    import os
    import subprocess

    from vidcap import config
    from vidcap.errors import check_same_build, clear_stored_errors, retry_targets

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = config.build_config(args.configfile, args.config)
    check_same_build(cfg, None)
    passed = [arg for path in args.configfile for arg in ("--configfile", path)]
    passed += ["--config", *args.config] if args.config else []
    if args.dry_run:
        from vidcap.errors import error_shards

        found = error_shards(cfg["output"], cfg["shards"], cfg["keys"])["shards"]
    else:
        found = clear_stored_errors(cfg["results"], cfg["shards"])
    if not found:
        print("no error records")
        return 0
    snakefile = os.path.join(repo, "Snakefile")
    beside = os.path.join(os.path.dirname(sys.executable), "snakemake")  # this venv's, if on no PATH
    cmd = [beside if os.path.exists(beside) else "snakemake"]
    cmd += [*(["-s", snakefile] if os.path.exists(snakefile) else []), *passed]
    cmd += [*args.snakemake_args, "--forcerun", *retry_targets(list(found), cfg["results"])]
    print(f"{sum(found.values())} error record(s) in {len(found)} shard(s): re-sending only them")
    if args.dry_run:
        import shlex

        print(shlex.join(cmd))
        return 0
    return subprocess.run(cmd).returncode


def _add_export_command(sub) -> None:
    from vidcap.export import FORMATS

    export = sub.add_parser(
        "export",
        help="write a finished build's captions in a trainer's format: LLaMA-Factory, ms-swift, "
        "LLaVA-Video or Parquet (docs/export.md)",
    )
    export.add_argument("output", help="the workflow's output file (.json or .jsonl)")
    export.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    export.add_argument("-o", "--dest", help="file to write (default: beside OUTPUT, named for the format)")
    export.add_argument("--keep-errors", action="store_true", help="keep error records (empty answer)")
    export.add_argument(
        "--absolute",
        action="store_true",
        help="write media paths absolute, relative ones taken from the build's media root "
        "(config media_root, else the input's folder; without --configfile: OUTPUT's folder)",
    )
    export.add_argument(
        "--configfile", help="the build's config file, for its keys and media root (default: the schema's)"
    )


def _run_export(args) -> int:
    from vidcap import config
    from vidcap.export import export, format_result
    from vidcap.settings import media_root

    cfg = config.load(args.configfile, {"input": args.output} if not args.configfile else None)
    root = media_root(cfg) if args.absolute else None
    try:
        result = export(args.output, args.to, args.dest, cfg["keys"], args.keep_errors, root)
    except RuntimeError as exc:  # refused (e.g. it would overwrite its input): the user's to fix, one line
        raise ValueError(str(exc)) from exc
    print(format_result(result, args.to))
    return 0


def _add_quality_commands(sub) -> None:
    audit = sub.add_parser(
        "audit",
        help="duplicate and near-duplicate captions, boilerplate openings, "
        "length outliers, status counts of an output file",
    )
    audit.add_argument("output", help="the workflow's output file (.json or .jsonl)")
    audit.add_argument("--json", action="store_true", help="print the audit as JSON")
    audit.add_argument(
        "--caption-key",
        default="caption",
        help="record key holding the caption (config keys.caption); caption_set.NAME audits that entry",
    )
    audit.add_argument(
        "--jaccard", type=float, help="near-duplicate threshold (config audit.near_duplicate_jaccard)"
    )
    diff = sub.add_parser(
        "diff", help="records whose caption changed between two builds of the same input, and why"
    )
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--json", action="store_true", help="print the diff as JSON (changes held in memory)")
    diff.add_argument(
        "--caption-key", default="caption", help="record key holding the caption (config keys.caption)"
    )


def _run_quality_command(args) -> int:
    import json

    if args.command == "audit":
        from vidcap.audit import audit_output, format_audit

        given = {"near_duplicate_jaccard": args.jaccard} if args.jaccard is not None else None
        result = audit_output(args.output, given, args.caption_key)
        print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_audit(result))
        return 0
    from vidcap import diff

    for path in (args.old, args.new):  # both readable before a word of the comparison is printed
        open(path, "rb").close()
    keys = {"caption": args.caption_key}
    try:
        if args.json:
            print(json.dumps(diff.diff_outputs(args.old, args.new, keys), indent=2, ensure_ascii=False))
            return 0
        run = diff.run_differences(diff.output_provenance(args.old), diff.output_provenance(args.new))
        print(diff.format_run_differences(run))
        count = 0
        for change in diff.iter_changes(args.old, args.new, keys, diff.run_reasons(run)):
            count += 1
            print(diff.format_change(change))
    except ValueError as exc:  # outputs of different inputs; a malformed file is the caller's (exit 2)
        from vidcap.records import InputError

        if isinstance(exc, InputError):
            raise
        print(f"vidcap diff: {exc}", file=sys.stderr)
        return 1
    print(f"{count} records changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
