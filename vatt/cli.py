"""The `vatt` command. Each subcommand parses its arguments here and calls into the library;
heavy imports (torch, ray) happen inside the handlers so `vatt --help` stays fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vatt.config import DEFAULT_PRESET  # torch-free


def _add_config_args(parser: argparse.ArgumentParser,
                     example: str = "model.video.drop_rate=0.25") -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", default=DEFAULT_PRESET,
                       help="config preset under configs/ (tiny, bbs, mbs, lbs, ma-medium) or a YAML path")
    which.add_argument("--config", default=None, metavar="FILE",
                       help="a whole config as YAML (e.g. the best.yaml of `vatt sweep`), "
                            "instead of a preset; ${oc.env:...} and other resolvers are refused")
    which.add_argument("--config-env", default=None, metavar="VAR",
                       help="a whole config as YAML in this environment variable (how a "
                            "RayJob of `vatt submit` carries its config)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"dotlist overrides, e.g. {example} (literal values: "
                             "${...} interpolations are refused; credentials come from the "
                             "environment, e.g. AWS_SECRET_ACCESS_KEY)")


def _cmd_info(args: argparse.Namespace) -> int:
    from vatt.model.summary import print_summary

    from vatt.config import load_config

    cfg = load_config(args.preset, args.overrides)
    print_summary(cfg, forward=not args.no_forward)
    from vatt.evaluate.tasks import describe_tasks

    print(f"\nevaluation tasks (eval.tasks: {', '.join(cfg.eval.tasks)}; when their data is "
          f"ingested: {', '.join(cfg.eval.tasks_if_ingested)}):")
    for line in describe_tasks():
        print(f"  {line}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from vatt.config import ConfigError, load_config
    from vatt.data.loader import DataError
    from vatt.train.preflight import PreflightError
    from vatt.train.pretrain import pretrain

    cfg = load_config(args.preset, args.overrides)
    if args.data_rev is not None:  # train on a named data version: dvc pull it first
        from vatt.data import versioning

        try:
            version = versioning.pull(rev=args.data_rev, storage=cfg.storage,
                                      remote=cfg.storage.dvc_remote)
        except versioning.VersioningError as err:
            print(f"vatt pretrain: cannot pull data revision {args.data_rev!r}: {err}",
                  file=sys.stderr)
            return 2
        print(f"data: pulled {args.data_rev} (version {version})")
    try:
        result = pretrain(cfg)
    except ConfigError as err:
        kind = "cannot start" if isinstance(err, PreflightError) else "config error"
        print(f"vatt pretrain: {kind}: {err}", file=sys.stderr)
        return 2
    except DataError as err:  # no ingested data where data.path points
        print(f"vatt pretrain: cannot start: {err}", file=sys.stderr)
        return 2
    last = result.history[-1] if result.history else {}
    print(f"run folder: {result.run_uri}")
    print(f"checkpoint: {result.checkpoint_uri}")
    if last:
        print(f"step {last['step']}: loss {last['loss_total']:.4f} "
              f"(video-audio {last['loss_video_audio']:.4f}, video-text {last['loss_video_text']:.4f})")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from vatt.config import load_config
    from vatt.data.ingest import IngestError, ingest
    from vatt.data.versioning import VersioningError, version_ingested

    overrides = list(args.overrides)
    if args.out is not None:  # the ingest flow's rule: ingestion writes into data.path
        if any(item.startswith("data.path=") for item in overrides):
            print(f"vatt ingest: --out {args.out} and data.path= both name the output folder; "
                  "give one of them", file=sys.stderr)
            return 2
        overrides.append(f"data.path={args.out}")
    cfg = load_config(args.preset, overrides)
    try:
        ingest(cfg, args.source, args.path, cfg.data.path, name=args.name)
    except IngestError as err:
        print(f"vatt ingest: {err}", file=sys.stderr)
        return 1
    try:
        print(version_ingested(cfg.data.path, cfg.storage, enabled=not args.no_version).message)
    except VersioningError as err:
        print(f"vatt ingest: data ingested but not versioned: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from vatt.checkpoints import CheckpointError
    from vatt.config import load_config
    from vatt.data.loader import DataError
    from vatt.evaluate.pipeline import run_evaluation
    from vatt.evaluate.registry import RegistryError

    datasets: dict[str, list[str]] = {}
    for item in args.dataset:  # TASK=NAME, repeated: the task's datasets in order
        task, _, name = item.partition("=")
        if not name:
            print(f"vatt evaluate: --dataset {item!r}: give TASK=NAME, e.g. "
                  "action_linear=ucf101", file=sys.stderr)
            return 2
        datasets.setdefault(task, []).append(name)
    from vatt.evaluate.pipeline import (describe_decision, note_unused_overrides,
                                        outcome_summary, run_evaluation_on_worker)
    from vatt.evaluate.registry import Decision

    note_unused_overrides(args.overrides)  # the model and its input are the checkpoint's
    cfg = load_config(args.preset, args.overrides)
    try:
        if args.on_worker:  # a RayJob's driver: the work goes to a worker with the accelerator
            summary = run_evaluation_on_worker(args.checkpoint, cfg, args.tasks, datasets,
                                               promote=not args.no_promote)
        else:
            summary = outcome_summary(run_evaluation(args.checkpoint, cfg, args.tasks, datasets,
                                                     promote=not args.no_promote))
    except (CheckpointError, RegistryError, DataError) as err:
        print(f"vatt evaluate: {err}", file=sys.stderr)
        return 1
    if args.outcome:  # for whoever started this job elsewhere (vatt.cluster.jobs)
        import json

        from vatt.storage import ObjectStore

        ObjectStore.from_config(cfg.storage).write_text(args.outcome,
                                                        json.dumps(summary, indent=2))
    for name, value in sorted(summary["metrics"].items()):
        print(f"{name:40s} {value:.4f}")
    print(f"report: {summary['report']}")
    if summary["decision"] is not None:
        print(describe_decision(Decision(**summary["decision"])))
    return 0


def _print_pipeline(result: dict) -> None:
    metrics = result.get("metrics") or {}
    before = ((result.get("promoted_before") or {}).get("metrics")) or {}
    if metrics:
        print(f"\n{'metric':40s} {'this model':>10s} {'promoted':>10s}")
        for name, value in sorted(metrics.items()):
            if name.partition(".")[2].startswith("num_"):
                continue  # counts, in the report
            other = before.get(name)
            shown = "none" if other is None else f"{other:.4f}"
            print(f"{name:40s} {value:10.4f} {shown:>10s}")
    decision = result.get("decision")
    if decision:
        from vatt.evaluate.pipeline import describe_decision
        from vatt.evaluate.registry import Decision

        print("\n" + describe_decision(Decision(**decision)))
    for key, label in (("checkpoint", "checkpoint"), ("report", "report")):
        if result.get(key):
            print(f"{label}: {result[key]}")
    if result.get("timing"):
        print("time: " + ", ".join(f"{row['stage']} {row['seconds']:.0f} s"
                                   for row in result["timing"]))


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from vatt.config import load_config

    load_config(args.preset, args.overrides)  # a bad key fails here, before Prefect starts
    from prefect.exceptions import ParameterTypeError

    from vatt_flows.pipeline import pipeline_parameters, run_pipeline

    try:  # what the flow would refuse is refused before Prefect starts too
        pipeline_parameters(args.preset, args.overrides, source=args.source,
                            source_path=args.path, promote=not args.no_promote)
    except ParameterTypeError as err:
        print(f"vatt pipeline: {err}", file=sys.stderr)
        return 2

    state, result, seconds = run_pipeline(args.preset, args.overrides, source=args.source,
                                          source_path=args.path, promote=not args.no_promote)
    _print_pipeline(result)
    if not state.is_completed():
        print(f"vatt pipeline: the retrain flow ended {state.name}: {state.message}",
              file=sys.stderr)
        return 1
    print(f"pipeline finished in {seconds / 60:.1f} min (including Prefect's start-up)")
    return 0


def _prefect_yaml(given: str | None) -> Path:
    """--file, else ./prefect.yaml (a project folder, or the image's home), else the checkout's."""
    from vatt_flows.deployments import PREFECT_YAML

    if given:
        return Path(given)
    return Path("prefect.yaml") if Path("prefect.yaml").is_file() else PREFECT_YAML


def _cmd_serve(args: argparse.Namespace) -> int:
    from vatt_flows.deployments import DeploymentError, serve_deployments

    try:
        serve_deployments(_prefect_yaml(args.file), limit=args.limit,
                          schedules=not args.no_schedules)
    except DeploymentError as err:
        print(f"vatt serve: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from vatt_flows.deployments import DeploymentError, deploy_to_pool

    try:
        names = deploy_to_pool(args.pool, _prefect_yaml(args.file))
    except DeploymentError as err:
        print(f"vatt deploy: {err}", file=sys.stderr)
        return 2
    for name in names:
        print(f"deployment {name} on work pool {args.pool}")
    print(f"run one with `prefect deployment run {names[0]}` or from the UI")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from vatt.data import versioning

    try:
        if args.action == "track":
            print(versioning.track(args.path))
        elif args.action == "version":
            print(versioning.data_version(rev=args.rev))
        else:
            from vatt.config import load_config

            storage = load_config(args.preset, args.overrides).storage
            remote = args.remote or storage.dvc_remote
            if args.action == "push":
                count = versioning.push(remote=remote, storage=storage)
                print(f"pushed {count} files; data version {versioning.data_version()}")
            else:
                print(versioning.pull(rev=args.rev, remote=remote, storage=storage))
    except versioning.VersioningError as err:
        print(f"vatt data {args.action}: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_data_publish(args: argparse.Namespace) -> int:
    from vatt.config import load_config
    from vatt.data.publish import PublishError, publish
    from vatt.storage import ObjectStore, StorageError

    if "=" in args.path:  # `vatt data publish KEY=VALUE`: the folder is the default
        args.overrides, args.path = [args.path, *args.overrides], "data"
    cfg = load_config(args.preset, args.overrides)
    if not cfg.data.versions_uri:
        print("vatt data publish: data.versions_uri is not set; give where versions go, e.g. "
              "`vatt data publish data data.versions_uri=s3://BUCKET/datasets`", file=sys.stderr)
        return 2
    try:
        published = publish(args.path, cfg.data.versions_uri, ObjectStore.from_config(cfg.storage))
    except (PublishError, StorageError) as err:
        print(f"vatt data publish: {err}", file=sys.stderr)
        return 1
    print(f"data version {published.version} ({published.kind}): {published.uri} "
          f"({published.files} files, {published.uploaded} uploaded now)")
    print(f"train on it in the cluster with data.path={published.uri}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from vatt_tuning.space import SpaceError
    from vatt_tuning.sweep import SweepError, run_sweep

    try:
        result = run_sweep(args.space, preset=args.preset, overrides=args.overrides,
                           samples=args.samples, out=args.out, scheduler=args.scheduler)
    except (SpaceError, SweepError) as err:
        print(f"vatt sweep: {err}", file=sys.stderr)
        return 2
    from vatt_tuning.results import RESULTS_MD

    print(result.files[RESULTS_MD].read_text())
    for name in result.files:
        print(f"{name}: {result.uri}/{name}")
    failed = [row for row in result.rows if str(row["status"]).startswith("failed")]
    if failed:
        print(f"vatt sweep: {len(failed)} trial(s) failed (status column; their error.txt "
              f"under {result.uri}/tune)", file=sys.stderr)
        return 1
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from vatt.checkpoints import run_folder
    from vatt.cluster import jobs
    from vatt.cluster.client import ClusterError
    from vatt.cluster.render import RenderError, render_job
    from vatt.config import load_config

    overrides = list(args.overrides)
    for key, value in (("cluster.accelerator", args.target), ("cluster.namespace", args.namespace),
                       ("cluster.timeout_s", args.timeout)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.preset, overrides)
    if not cfg.train.run_name:  # pinned here: the RayJob and the resumable run are named after it
        run_name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        cfg = replace(cfg, train=replace(cfg.train, run_name=run_name))
    from vatt.data.publish import PublishError, data_for_job
    from vatt.storage import ObjectStore, StorageError

    try:
        if not args.dry_run:  # the job reads one published data version (a local folder's)
            cfg, data = data_for_job(cfg, ObjectStore.from_config(cfg.storage))
            print(f"data version {data['version']}: {data['uri']} "
                  f"({data['uploaded']} files uploaded now)")
        rendered = render_job(cfg)
    except (RenderError, PublishError, StorageError) as err:
        print(f"vatt submit: {err}", file=sys.stderr)
        return 2
    from vatt.cluster.plan import plan_for  # the plan before the spend (stdout stays YAML)

    print("\n".join(plan_for(rendered).lines()), file=sys.stderr if args.dry_run else sys.stdout)
    if args.dry_run:
        print(rendered.to_yaml(), end="")
        return 0
    where = f"namespace {rendered.namespace}"
    try:
        client = jobs.client_for(cfg)
        if not args.wait:
            jobs.submit(client, rendered)
            print(f"rayjob {rendered.name} created in {where} (run {rendered.run_name}); follow it "
                  f"with `kubectl get rayjob {rendered.name} -n {rendered.namespace} -w`")
            return 0
        outcome = jobs.run_job(cfg, client, rendered)
    except KeyboardInterrupt:  # Ctrl-C stops following, not the job
        print(f"\nvatt submit: stopped following; rayjob {rendered.name} in {where} keeps running "
              "(if it was created). Follow it with "
              f"`kubectl get rayjob {rendered.name} -n {rendered.namespace} -w`, or cancel it "
              f"with `kubectl delete rayjob {rendered.name} -n {rendered.namespace}`",
              file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except ClusterError as err:  # jobs.JobFailedError too
        print(f"vatt submit: {err}", file=sys.stderr)
        return 1
    print(f"rayjob {outcome.name}: {outcome.status.deployment} in {outcome.status.elapsed_s:.0f} s"
          f"{' (deleted)' if outcome.deleted else ''}")
    print(f"run folder: {run_folder(cfg.train.storage_path, rendered.run_name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vatt", description=__doc__)
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own output (worker logs, Ray Data progress bars) on the "
                             "console instead of only in its log files (also: VATT_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    pipeline = sub.add_parser("pipeline", help="the main job: the Prefect `retrain` flow end to "
                                               "end (ingest, pretrain, evaluate, promote) on "
                                               "Prefect's ephemeral API and a local Ray")
    _add_config_args(pipeline)  # --config FILE (or --preset FILE) is the flow's `config`
    pipeline.add_argument("--source", default="synthetic",
                          help="what to ingest (default: the generated default dataset)")
    pipeline.add_argument("--path", default=None, help="the source folder or s3:// prefix")
    pipeline.add_argument("--no-promote", action="store_true",
                          help="evaluate and report, but leave the registry alone")
    pipeline.set_defaults(handler=_cmd_pipeline)

    serve = sub.add_parser("serve", help="serve the deployments of prefect.yaml (scheduled "
                                         "retraining, ingest, pretrain, evaluate) against the "
                                         "Prefect server at PREFECT_API_URL")
    serve.add_argument("--file", default=None, help="prefect.yaml to read (default: "
                                                    "./prefect.yaml, else the project's)")
    serve.add_argument("--limit", type=int, default=None,
                       help="most flow runs at once from this process (default: no limit)")
    serve.add_argument("--no-schedules", action="store_true",
                       help="serve with the deployments paused: their schedules stay on "
                            "the server, none runs (runs only when triggered)")
    serve.set_defaults(handler=_cmd_serve)

    deploy = sub.add_parser("deploy", help="register the deployments of prefect.yaml on the "
                                           "cluster's work pool (vatt-k8s) with the Prefect "
                                           "server at PREFECT_API_URL, for its Kubernetes worker")
    deploy.add_argument("--file", default=None, help="prefect.yaml to read (default: "
                                                     "./prefect.yaml, else the project's)")
    deploy.add_argument("--pool", default="vatt-k8s",
                        help="the work pool whose entries to register (default: vatt-k8s)")
    deploy.set_defaults(handler=_cmd_deploy)

    info = sub.add_parser("info", help="build a model from a preset, print parameter counts, "
                                       "FLOPs and run one forward pass; list the evaluation "
                                       "tasks")
    _add_config_args(info)
    info.add_argument("--no-forward", action="store_true", help="count only, skip the forward pass")
    info.set_defaults(handler=_cmd_info)

    from vatt.data.sources import SOURCES  # light: no media libraries

    ingest = sub.add_parser("ingest", help="raw dataset (local folder or s3:// prefix) -> tar "
                                           "shards, manifest, report and vocabulary under "
                                           "data.path/NAME")
    _add_config_args(ingest)
    ingest.add_argument("--source", required=True, choices=SOURCES, metavar="SOURCE",
                        help="the reader: howto100m, audioset, kinetics, ucf101, esc50, msrvtt, "
                             "youcook2, mit (Moments in Time), imagenet (ILSVRC2012, each image "
                             "a one-frame clip), or synthetic (the generated default dataset)")
    ingest.add_argument("--name", default=None,
                        help="the dataset's folder under data.path (lowercase letters, digits, - "
                             "and _; default: the source's name), e.g. --name kinetics600 "
                             "beside an earlier kinetics400; not for synthetic, which writes "
                             "synthetic-<layout>")
    ingest.add_argument("--path", default=None,
                        help="the source folder in its published layout, or s3://bucket/prefix "
                             "(synthetic: where the raw media are generated)")
    ingest.add_argument("--out", default=None, metavar="DIR",
                        help="output folder: short for data.path=DIR (default: data.path, "
                             "which is data)")
    ingest.add_argument("--no-version", action="store_true",
                        help="do not `dvc add` + `dvc push` the result (done by default when "
                             "data.path is the project's data/ folder)")
    ingest.set_defaults(handler=_cmd_ingest)

    pretrain = sub.add_parser("pretrain", help="pretrain VATT with Ray Train (local Ray, or the "
                                               "cluster at RAY_ADDRESS); same run name resumes")
    _add_config_args(pretrain)
    pretrain.add_argument("--data-rev", default=None, metavar="GIT_REV",
                          help="`dvc pull` the data.dvc of this git revision (tag, branch, "
                               "commit) before training")
    pretrain.set_defaults(handler=_cmd_pretrain)

    evaluate = sub.add_parser("evaluate", help="downstream evaluation of a checkpoint (probes, "
                                               "zero-shot retrieval), report, promotion gate")
    # eval.*, data.path=... (the model is the checkpoint's)
    _add_config_args(evaluate, example="eval.probe.epochs=20")
    evaluate.add_argument("--checkpoint", default="latest",
                          help="checkpoint folder or s3:// prefix, or 'latest' (newest under "
                               "train.storage_path)")
    from vatt.evaluate.tasks import TASKS

    evaluate.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS),
                          metavar="TASK",
                          help=f"{' '.join(TASKS)} (default: eval.tasks, plus "
                               "eval.tasks_if_ingested where their data is ingested; "
                               "`vatt info` describes them)")
    evaluate.add_argument("--dataset", action="append", default=[], metavar="TASK=NAME",
                          help="an ingested dataset folder under data.path for a task, e.g. "
                               "action_linear=ucf101; repeat for several (the first is what "
                               "<task>.<metric> means). Default: eval.datasets, else every "
                               "ingested dataset whose source the task reads (real before "
                               "generated)")
    evaluate.add_argument("--no-promote", action="store_true",
                          help="report only; leave the registry alone")
    evaluate.add_argument("--outcome", default=None, metavar="URI",
                          help="also write the outcome (metrics, report, decision) as JSON to "
                               "this file or s3:// key (how an evaluation RayJob answers)")
    evaluate.add_argument("--on-worker", action="store_true",
                          help="run the evaluation as a Ray task on a worker of the connected "
                               "Ray cluster, with its GPU when train.use_gpu (a RayJob's driver "
                               "runs on the head, which has none)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    sweep = sub.add_parser("sweep", help="a Ray Tune sweep of pretraining runs over a search "
                                         "space (tuning/*.yaml), selected on the validation "
                                         "split; the same --out again resumes it")
    sweep.add_argument("space", help="search space YAML, or a name under tuning/ (e.g. "
                                     "droptoken_sharing: DropToken rate x backbone sharing)")
    _add_config_args(sweep)
    sweep.add_argument("--samples", type=int, default=1,
                       help="repeats of the grid / draws of the random parameters (default 1)")
    sweep.add_argument("--out", default=None,
                       help="output folder or s3://bucket/prefix (default: sweeps/<space "
                            "name>); an existing sweep there is resumed. On a Ray cluster "
                            "(RAY_ADDRESS) use s3://: the trials' runs are stored there")
    sweep.add_argument("--scheduler", choices=("asha", "fifo"), default=None,
                       help="replace the space's scheduler (fifo: every trial runs to the end)")
    sweep.set_defaults(handler=_cmd_sweep)

    submit = sub.add_parser("submit", help="pretrain on Kubernetes: render the run's KubeRay "
                                           "RayJob from k8s/, create it, and with --wait follow "
                                           "it to its end")
    _add_config_args(submit)
    submit.add_argument("--target", choices=("cpu", "gpu", "tpu"), default=None,
                        help="the overlay k8s/overlays/<target> (default: cluster.accelerator)")
    submit.add_argument("--namespace", default=None,
                        help="Kubernetes namespace (default: cluster.namespace)")
    submit.add_argument("--dry-run", action="store_true",
                        help="print the plan (accelerators, FLOPs, expected wall time) to "
                             "stderr, then the rendered manifests as multi-document YAML to "
                             "stdout, and exit")
    submit.add_argument("--wait", action="store_true",
                        help="follow the RayJob until it ends, saying why it waits (no GPU "
                             "node, image pull, crash loop, no operator); exit 1 when it "
                             "failed; Ctrl-C stops following, not the job (exit 130)")
    submit.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="stop following after this long (default: cluster.timeout_s; at "
                             "most the RayJob's activeDeadlineSeconds plus 15 minutes)")
    submit.set_defaults(handler=_cmd_submit)

    data = sub.add_parser("data", help="version data/ with DVC (track, push, pull, version) and "
                                       "publish a version for the cluster")
    data_sub = data.add_subparsers(dest="action", required=True)
    track = data_sub.add_parser("track", help="dvc add: hash the folder into data.dvc")
    track.add_argument("path", nargs="?", default="data", help="folder to track (default: data)")
    version = data_sub.add_parser("version", help="print the data version (md5 in data.dvc)")
    version.add_argument("--rev", default=None, help="git revision to read data.dvc from")
    for action, text in (("push", "dvc push data.dvc to a remote"),
                         ("pull", "dvc pull data.dvc (of --rev) from a remote; prints the version")):
        cmd = data_sub.add_parser(action, help=text)
        _add_config_args(cmd)  # storage.endpoint_url=..., storage.dvc_remote=...
        cmd.add_argument("--remote", default=None,
                         help="DVC remote: local or s3 (default: storage.dvc_remote, else .dvc/config's)")
        if action == "pull":
            cmd.add_argument("--rev", default=None, help="git revision (tag, branch, commit) of data.dvc")
    publish = data_sub.add_parser(
        "publish", help="upload a data folder as its version to data.versions_uri/<version>/ "
                        "(immutable; where a cluster's jobs read it), print its prefix")
    publish.add_argument("path", nargs="?", default="data", help="data folder (default: data)")
    _add_config_args(publish)  # data.versions_uri=s3://..., storage.endpoint_url=...
    publish.set_defaults(handler=_cmd_data_publish)
    data.set_defaults(handler=_cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vatt.config import ConfigError

    from vatt.console import configure_console, set_verbose

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may also come after options (`vatt sweep SPACE --out DIR k=v`), where
    # argparse has already closed the positionals
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.verbose:
        set_verbose(True)
    configure_console()
    if getattr(args, "config_env", None):
        import os
        import tempfile

        text = os.environ.get(args.config_env)
        if not text:
            print(f"vatt {args.command}: --config-env {args.config_env}: that environment "
                  "variable is not set or empty (it should hold a whole config as YAML)",
                  file=sys.stderr)
            return 2
        folder = Path(tempfile.mkdtemp(prefix="vatt-config-"))
        args.config = str(folder / "config.yaml")
        Path(args.config).write_text(text)
    if getattr(args, "config", None):
        config = Path(args.config)
        if not config.is_file() or config.suffix not in (".yaml", ".yml"):
            print(f"vatt {args.command}: --config {args.config}: no such YAML file (give the path "
                  "of a .yaml config, e.g. the best.yaml a sweep wrote)", file=sys.stderr)
            return 2
        args.preset = str(config)
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"vatt {args.command}: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
