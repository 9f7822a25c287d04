"""``vla-steer``: demos, bc, train and eval from a YAML recipe.

Examples::

    vla-steer train recipes/quickstart.yaml
    vla-steer train recipes/lerobot_diffusion_push_lpds.yaml base.path=outputs/train/x/checkpoints/last/pretrained_model
    vla-steer train recipes/metaworld_push_dsrl_sac.yaml train.seed=1 train.output_dir=runs/sac1
    accelerate launch --cpu --num_processes 2 -m vla_steer train recipes/quickstart.yaml
    vla-steer eval runs/quickstart --episodes 100
    vla-steer check-layout recipes/metaworld_push_lpds.yaml --episodes 20
    vla-steer push runs/quickstart --repo-id me/push-v3-lpds --dry-run
    vla-steer pull me/push-v3-lpds --revision <commit>
    vla-steer info me/push-v3-lpds --base
    vla-steer search --base outputs/train/my_policy/checkpoints/last/pretrained_model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vla_steer.config import RecipeError, load_recipe, recipe_from_dict


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="override any recipe field, e.g. train.seed=1 algorithm.name=dsrl_sac")


def _with_threads(recipe):
    """Every command runs on ``train.torch_threads`` threads when the recipe sets it (as the trainer does): on a
    shared machine torch's default of one thread per core makes a small job crawl when another job is running."""
    if recipe.train.torch_threads:
        import torch

        torch.set_num_threads(recipe.train.torch_threads)
    return recipe


def cmd_demos(args) -> None:
    from vla_steer.pipeline import ensure_demos

    print(ensure_demos(_with_threads(load_recipe(args.recipe, args.overrides))))


def cmd_bc(args) -> None:
    from vla_steer.pipeline import ensure_base

    print(ensure_base(_with_threads(load_recipe(args.recipe, args.overrides))))


def _summary(results: dict) -> str:
    base, final = results["base"], results["final"]
    lines = [f"{results['task']} | {results['method']} | seed {results['seed']} | {results['env_steps']} env steps | "
             f"{results['wall_time_s'] / 60:.1f} min",
             f"  {'':10s} {'success':>8s} {'return':>9s} {'entropy':>8s}"]
    for label, m in (("base", base), ("steered", final)):
        lines.append(f"  {label:10s} {m['success_rate']:8.2f} {m['return_mean']:9.1f} {m['action_entropy']:8.2f}")
    return "\n".join(lines)


def cmd_train(args) -> None:
    from vla_steer.training import SteeringTrainer

    recipe = load_recipe(args.recipe, args.overrides)
    trainer = SteeringTrainer(recipe)
    results = trainer.run()
    if trainer.accelerator.is_main_process:
        print(_summary(results))
        print(f"  results: {Path(recipe.train.output_dir) / 'results.json'}")
        print(f"  plot:    {results['plot']}")


def cmd_eval(args) -> None:
    """Base vs. steered from a run's last checkpoint: builds the base, the head and the evaluator only (no replay
    buffer, no learner, no training envs)."""
    from accelerate import Accelerator

    from vla_steer.algorithms import build_algorithm
    from vla_steer.pipeline import build_base, recipe_layout
    from vla_steer.training.checkpoint import load_tree
    from vla_steer.training.evaluator import Evaluator

    run_dir = Path(args.run_dir)
    recipe_file = run_dir / "recipe.json"
    if not recipe_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no recipe.json); pass the train.output_dir of a run")
    overrides = [f"train.eval_episodes={args.episodes}"] if args.episodes else []
    overrides += [f"train.eval_best_of_k={args.best_of_k}"] if args.best_of_k else []
    unsupported = [item for item in args.overrides if not item.startswith("train.")]
    if unsupported:
        raise RecipeError(f"vla-steer eval takes evaluation settings (train.*) only, not {unsupported}")
    recipe = _with_threads(recipe_from_dict(json.loads(recipe_file.read_text()),
                                            overrides + list(args.overrides) + [f"train.output_dir={run_dir}"]))
    checkpoint = run_dir / "checkpoints" / "last"
    if not (checkpoint / "trainer_state.json").is_file():
        raise FileNotFoundError(f"no checkpoint in {checkpoint}")
    accelerator = Accelerator(cpu=True) if not _cuda() else Accelerator()
    base = build_base(recipe, accelerator, show_progress=False)
    layout = recipe_layout(recipe, base.adapter)
    algo = build_algorithm(recipe.algorithm, recipe.head, base.adapter, layout, accelerator)
    algo.load_state_dict(load_tree(checkpoint, "algorithm"))
    evaluator = Evaluator(recipe, base, layout, seed=recipe.train.eval_seed)
    report = {"base": evaluator.evaluate("base"), "steered": evaluator.evaluate("policy", algo)}
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))


def cmd_check_layout(args) -> int:
    """The frozen base under each latent layout with prior latents, beside its own noise; exit status 1 when the
    recipe's own layout does not keep the base."""
    from accelerate import Accelerator

    from vla_steer.pipeline import build_base, recipe_layout
    from vla_steer.training.layout_check import DEFAULT_ROWS, candidate_layouts, check_layouts, format_report

    overrides = list(args.overrides) + ([f"train.eval_episodes={args.episodes}"] if args.episodes else [])
    recipe = _with_threads(load_recipe(args.recipe, overrides))
    accelerator = Accelerator(cpu=True) if not _cuda() else Accelerator()
    base = build_base(recipe, accelerator, show_progress=True)
    adapter = base.adapter
    rows = args.rows or DEFAULT_ROWS
    skipped = [k for k in rows if not 1 < k < adapter.noise_shape[0]]
    if skipped:
        print(f"note: --rows {skipped} left out: interpolated rows must lie strictly between 1 (tiled) and the chunk "
              f"length {adapter.noise_shape[0]} (full), which are checked anyway")
    layouts = candidate_layouts(adapter.noise_shape, adapter.action_dim, rows)
    own = recipe_layout(recipe, adapter)
    if own.describe() not in [layout.describe() for layout in layouts]:
        layouts.append(own)
    report = check_layouts(recipe, base, layouts, show_progress=recipe.train.show_progress)
    report["recipe_layout"] = own.describe()
    print(f"{recipe.name}: noise {list(adapter.noise_shape)}, {adapter.action_dim} action dims, "
          f"recipe's layout: {own.describe()}")
    print(format_report(report))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    own_row = next(r for r in report["layouts"] if r["layout"] == own.describe())
    return 0 if own_row["keeps_base"] else 1


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class CommandError(Exception):
    """A user-facing failure of a hub command (printed without a traceback)."""


def _hub_errors(fn):
    """Turn the hub's ValueErrors (bad files, a head for another base, a missing argument) into clean exits."""
    def wrapped(args) -> int | None:
        try:
            return fn(args)
        except (FileNotFoundError, FileExistsError):
            raise
        except ValueError as exc:  # HeadFormatError, BaseMismatchError and argument errors are ValueErrors
            raise CommandError(str(exc)) from exc
    return wrapped


def _head_source(path: Path) -> tuple[str, Path]:
    """("run", run_dir) for a training run, ("dir", dir) for a head directory."""
    if (path / "head" / "head_config.json").is_file():
        return "run", path
    if (path / "head_config.json").is_file():
        return "dir", path
    raise FileNotFoundError(f"{path} is neither a training run (no head/head_config.json) nor a head directory "
                            "(no head_config.json)")


def _json_object(text: str | None, what: str) -> dict | None:
    """A command-line JSON object (strict JSON, as the head format reads it), or None when not given."""
    from vla_steer.hub.format import parse_json

    value = parse_json(text.encode(), what) if text else None
    if value is not None and not isinstance(value, dict):
        raise CommandError(f"{what} must be a JSON object, e.g. '{{\"pooling\": \"mean\"}}', got {text!r}")
    return value


@_hub_errors
def cmd_push(args) -> None:
    import tempfile

    from vla_steer.hub.api import prepare_upload, push_directory, validate_directory
    from vla_steer.hub.format import is_hub_repo_id
    from vla_steer.lerobot_policy import ActingHead, export_run

    kind, source = _head_source(Path(args.source))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.output_dir or Path(tmp) / "head")
        card_kwargs = {"repo_id": args.repo_id, **({"license": args.license} if args.license else {})}
        export = dict(base_model_name_or_path=args.base_model, revision=args.base_revision, model_card=True,
                      card_kwargs=card_kwargs, allow_base_mismatch=args.allow_base_mismatch)
        if kind == "run":
            directory = export_run(source, directory, base=args.base, datasets=args.dataset,
                                   adapter_kwargs=_json_object(args.adapter_kwargs, "--adapter-kwargs"), **export)
        elif validate_directory(source).format_version == 0:  # checked before anything parses it
            if args.base is None:
                raise CommandError(f"{source} is a training run's head/ (format 0), which does not name its base: push "
                                   "the run directory instead, or pass --base")
            directory = ActingHead.from_dir(source).save_pretrained(directory, base=args.base, **export)
        else:
            if args.base or args.base_model or args.base_revision:
                raise CommandError(f"{source} already names its base; --base / --base-model / --base-revision apply to "
                                   "training runs")
            directory = source
        plan = prepare_upload(directory, repo_id=args.repo_id, commit_message=args.commit_message, card_kwargs=card_kwargs)
        recorded_base = plan.config["base_model_name_or_path"]
        if not is_hub_repo_id(recorded_base):
            print(f"note: the base is recorded as the local path {recorded_base}; others cannot load it from there. "
                  "Publish the base and pass --base-model <repo id> (and --base-revision <commit>).")
        print(f"{'would upload' if args.dry_run else 'uploading'} to {args.repo_id}"
              f"{f' (branch {args.branch})' if args.branch else ''}: {plan.commit_message!r}")
        for op in plan.operations:
            size = op.upload_info.size
            print(f"  {op.path_in_repo:60s} {size:>12,d} bytes")
        if plan.skipped:
            print(f"  not uploaded (not part of the format): {', '.join(plan.skipped)}")
        if args.output_dir:
            print(f"head directory: {directory}")
        if args.dry_run:
            return
        info = push_directory(directory, args.repo_id, commit_message=args.commit_message, private=args.private,
                              token=args.token, branch=args.branch, create_pr=args.create_pr or None,
                              card_kwargs=card_kwargs)
        print(f"pushed: {getattr(info, 'commit_url', info)}")


@_hub_errors
def cmd_pull(args) -> None:
    from vla_steer.hub.api import describe, pull

    checked = pull(args.repo_id, revision=args.revision, local_dir=args.local_dir, cache_dir=args.cache_dir)
    print(checked.path)
    print("\n".join(describe(checked.config)))


@_hub_errors
def cmd_info(args) -> int | None:
    """Describe a head and check it the way its loaders will: a LeRobot steered directory's ``config.json`` is parsed
    as LeRobot parses it, and ``--base`` alone checks the base that directory's ``config.json`` names (what
    ``from_pretrained`` loads), with the same compatibility checks."""
    from vla_steer.adapters import adapter_for_lerobot_policy
    from vla_steer.hub.api import describe, load_base_for, resolve_repo, validate_directory
    from vla_steer.hub.format import HeadFormatError
    from vla_steer.lerobot_policy import ActingHead, SteeredPolicy
    from vla_steer.lerobot_policy.modeling_steered import load_base_policy, read_steered_config, resolve_base_path

    path = Path(args.source).expanduser()
    local = path.is_dir()
    if local:
        kind, path = _head_source(path)
        directory = path / "head" if kind == "run" else path
    else:
        directory = resolve_repo(args.source, revision=args.revision, cache_dir=args.cache_dir)
    checked = validate_directory(directory)
    config, head = checked.config, ActingHead.from_checked(checked)
    steered = read_steered_config(directory) if checked.policy_config is not None else None
    if steered is not None:
        resolve_base_path(steered, directory if local else None)  # a base_path climbing out of the directory is refused
    if args.json:
        print(json.dumps(config, indent=2))
    else:
        print(f"{directory}")
        print("\n".join(describe(config)))
        if steered is not None:
            print(f"loads base:  {steered.base_path} @ {steered.base_revision or 'unpinned'} (config.json), "
                  f"best_of_k {steered.best_of_k}, deterministic {steered.deterministic}")
    if args.base is None:
        return None
    base = args.base or None  # --base alone: the base the loaders load
    adapter_kwargs = steered.adapter_kwargs if steered is not None else (config.get("features") or {}).get("adapter_kwargs")
    if steered is not None and base is None:
        if args.base_revision:  # check another revision of the base config.json names
            steered.base_revision = args.base_revision
        _, base_policy = load_base_policy(steered, directory if local else None, cache_dir=args.cache_dir)
        adapter = adapter_for_lerobot_policy(base_policy, **steered.adapter_kwargs)
        where = f"{steered.base_path} @ {steered.base_revision or 'unpinned'} (named by config.json)"
    else:
        adapter = load_base_for(config, base, **({"revision": args.base_revision} if base and args.base_revision else {}),
                                cache_dir=args.cache_dir)
        where = base or f"{config.get('base_model_name_or_path')} @ {config.get('revision') or 'unpinned'}"
    problems = head.fit_problems(adapter) or head.base_differences(adapter, adapter_kwargs)
    if not problems and steered is not None and hasattr(adapter, "policy"):
        try:  # what else the steered policy checks when it is built (best_of_k needs a critic, observation history)
            SteeredPolicy(steered, base_policy=adapter.policy, head=head)
        except HeadFormatError as exc:
            problems = [str(exc)]
    if problems:
        print(f"does NOT fit the base {where}:\n  " + "\n  ".join(problems))
        return 1
    print(f"fits the base {where}" + ("" if "base_fingerprint" in config else
                                      " (shapes only: this head records no fingerprint)"))


def _add_hub_parsers(sub) -> None:
    p = sub.add_parser("push", help="upload a trained head (a run directory or a head directory) to the Hugging Face Hub")
    p.add_argument("source", help="a training run's output_dir, or a head directory (save_pretrained)")
    p.add_argument("--repo-id", required=True, help="the Hub repository, e.g. me/push-v3-lpds (created if needed)")
    p.add_argument("--base", default=None, help="where the base is now (path or repo id); default for runs on a built-in "
                                                "base: the recipe's base.path or its cached behaviour-cloned base")
    p.add_argument("--base-model", default=None, help="what to record as base_model_name_or_path (e.g. the Hub repo the "
                                                      "base is published as); default: --base")
    p.add_argument("--base-revision", default=None, help="the base's revision to record (a commit hash pins it)")
    p.add_argument("--adapter-kwargs", default=None, help="JSON adapter options of a LeRobot base, as in training")
    p.add_argument("--dataset", action="append", default=None, help="Hub dataset id the head was trained on (repeatable)")
    p.add_argument("--license", default=None)
    p.add_argument("--branch", default=None, help="push to this branch (created if needed)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--private", action="store_true", default=None)
    p.add_argument("--commit-message", default=None)
    p.add_argument("--token", default=None, help="Hub token (default: the one `hf auth login` stored)")
    p.add_argument("--output-dir", default=None, help="keep the exported head directory here")
    p.add_argument("--dry-run", action="store_true", help="export and list the upload, send nothing")
    p.add_argument("--allow-base-mismatch", action="store_true",
                   help="export even if the base found differs from the one the head was trained on (warns loudly)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("pull", help="download a head from the Hub (its format files only) and check it")
    p.add_argument("repo_id")
    p.add_argument("--revision", default=None, help="branch, tag or commit hash")
    p.add_argument("--local-dir", default=None, help="copy the files here (default: the Hugging Face cache)")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("info", help="what a head was trained on, its metrics, and whether it fits a base")
    p.add_argument("source", help="a head directory, a training run, or a Hub repo id")
    p.add_argument("--revision", default=None)
    p.add_argument("--base", nargs="?", const="", default=None, metavar="PATH_OR_ID",
                   help="check the head against this base (alone: the base the head names); exit status 1 if it "
                        "does not fit")
    p.add_argument("--base-revision", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", action="store_true", help="print head_config.json")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("search", help="Hub heads trained on exactly this base (by its fingerprint), with their metrics")
    p.add_argument("--base", required=True, metavar="PATH_OR_ID", help="the base checkpoint: a directory or a Hub repo id")
    p.add_argument("--revision", default=None, help="the base's revision")
    p.add_argument("--limit", type=int, default=100, help="at most this many tagged repos are read")
    p.add_argument("--full-fingerprint", action="store_true", help="hash every byte of the base (heads fingerprinted "
                                                                   "with --full-fingerprint at push)")
    p.add_argument("--token", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", action="store_true", help="print the heads as JSON")
    p.set_defaults(func=cmd_search)


@_hub_errors
def cmd_search(args) -> None:
    import contextlib
    import dataclasses

    from vla_steer.hub.api import search_heads
    from vla_steer.hub.fingerprint import base_tag

    hub = {k: v for k, v in (("token", args.token), ("cache_dir", args.cache_dir)) if v}
    with contextlib.redirect_stdout(sys.stderr):  # LeRobot's loader prints; stdout stays the report (JSON with --json)
        fingerprint, heads, skipped = search_heads(args.base, revision=args.revision, limit=args.limit,
                                                   full_fingerprint=args.full_fingerprint, **hub)
    if args.json:
        print(json.dumps({"base_fingerprint": fingerprint, "tag": base_tag(fingerprint),
                          "heads": [dataclasses.asdict(h) for h in heads], "skipped": skipped}, indent=2))
        return
    print(f"base {args.base}: weights {fingerprint['weights'][:16]} ({fingerprint['method']}), tag {base_tag(fingerprint)}")
    if not heads:
        print("no head on the Hub was trained on this base")
    else:
        print(f"  {'repo':40s} {'algorithm':9s} {'env':24s} {'success base -> steered':>24s}  adapter options")
    for head in heads:
        base, steered = head.metrics.get("base") or {}, head.metrics.get("steered") or {}
        success = (f"{base['success_rate']:.2f} -> {steered['success_rate']:.2f}"
                   if "success_rate" in base and "success_rate" in steered else "n/a")
        print(f"  {head.repo_id:40s} {head.algorithm:9s} {str(head.env or '-'):24s} {success:>24s}  "
              f"{json.dumps(head.adapter_kwargs)}")
    if heads:
        print(f"check one fully (adapter options included): vla-steer info <repo> --base {args.base}")
    for line in skipped:
        print(f"  skipped {line}")


def cmd_serve(args) -> None:
    from vla_steer.lerobot_policy.serve import serve

    serve(args.server_args)


def cmd_actor(args) -> None:
    from vla_steer.training.actor_learner import Actor

    print(json.dumps({k: v for k, v in Actor(load_recipe(args.recipe, args.overrides)).run().items()
                      if not isinstance(v, list)}))


def cmd_learner(args) -> None:
    from vla_steer.training.actor_learner import LearnerProcess

    print(json.dumps(LearnerProcess(load_recipe(args.recipe, args.overrides)).run()))


def cmd_robot(args) -> int:
    """The learner in a child process, the actor in this one (it owns the robot and the e-stop). A stop of the actor
    (e-stop, watchdog, Ctrl+C) ends the learner too; either can be restarted alone with `actor` / `learner`."""
    import subprocess

    recipe = load_recipe(args.recipe, args.overrides)  # checked before anything starts
    learner = subprocess.Popen([sys.executable, "-m", "vla_steer.training.actor_learner", "learner", args.recipe,
                                *args.overrides])
    try:
        cmd_actor(args)
    except BaseException:
        learner.terminate()
        raise
    status = learner.wait()
    print(f"head: {Path(recipe.train.output_dir) / 'head'}" if status == 0 else f"the learner exited with {status}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-steer", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (("demos", cmd_demos, "generate (or find cached) demonstrations as a LeRobotDataset"),
                                ("bc", cmd_bc, "train (or find cached) the behaviour-cloned base policy"),
                                ("train", cmd_train, "steer a base with RL (base.path: a LeRobot checkpoint, or demos + a BC "
                                 "base built here), then evaluation, plot and head")):
        p = sub.add_parser(name, help=help_text)
        _add_recipe_args(p)
        p.set_defaults(func=fn)
    for name, fn, help_text in (
            ("robot", cmd_robot, "steer on a robot (env.type: gym_manipulator): the actor here, the learner in a "
             "second process; both resume after a kill"),
            ("actor", cmd_actor, "the acting process alone: base + head at the control rate, episodes written to "
             "train.output_dir"),
            ("learner", cmd_learner, "the training process alone: reads the actor's episodes, publishes heads")):
        p = sub.add_parser(name, help=help_text)
        _add_recipe_args(p)
        p.set_defaults(func=fn)
    p = sub.add_parser("eval", help="evaluate a trained run's head against its base")
    p.add_argument("run_dir", help="a run's train.output_dir")
    p.add_argument("--episodes", type=int, default=None, help="episodes per evaluation (default: the recipe's)")
    p.add_argument("--best-of-k", type=int, default=None, metavar="K",
                   help="critic-guided selection: the critic picks the best of K head proposals per observation")
    p.add_argument("--output", type=Path, default=None, help="also write the report (JSON) to this file")
    p.add_argument("overrides", nargs="*", metavar="train.field=value",
                   help="evaluation settings, e.g. train.eval_num_envs=50 train.eval_seed=3000000")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("check-layout", help="before RL: the frozen base under each latent layout (prior latents) "
                       "beside its own noise, and which layout keeps it working")
    _add_recipe_args(p)
    p.add_argument("--episodes", type=int, default=None, help="episodes per layout (default: train.eval_episodes)")
    p.add_argument("--rows", type=int, nargs="+", default=None, metavar="K",
                   help="control rows of the interpolated layouts to try (default: 2 4 8)")
    p.add_argument("--output", type=Path, default=None, help="also write the report (JSON) to this file")
    p.set_defaults(func=cmd_check_layout)
    _add_hub_parsers(sub)
    p = sub.add_parser("serve", help="LeRobot's async inference policy server, able to serve steered policies",
                       description="Runs lerobot.async_inference.policy_server with the 'steered' policy type enabled. "
                                   "All arguments are LeRobot's (--host, --port, --fps, --inference_latency, ...).")
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="arguments for LeRobot's policy server")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (RecipeError, FileNotFoundError, FileExistsError, CommandError) as exc:
        print(f"vla-steer: error: {exc}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
