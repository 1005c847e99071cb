"""Headless use: runs, the method list, the model list.

    python -m unlearning run --model digits --method esd --forget 3 --out DIR [--set key=value ...]
    python -m unlearning relearn --run DIR [--set key=value ...]
    python -m unlearning attack --run DIR --kind unlearndiffatk|inversion|prompts [--prompts FILE] [--out DIR2] [--set key=value ...]
    python -m unlearning export --run DIR --out MODEL_DIR      (full diffusers folder of the unlearned model)
    python -m unlearning export --run DIR --out FILE --format delta|lora [--rank N]
    python -m unlearning export --run DIR --out DIR --format bundle [--push-to-hub owner/name]
    python -m unlearning bench scaling [--counts 1,2,4,8,16,32,64] [--methods speed,mace,rece,uce,scapre,esd]
    python -m unlearning bench vdu [--model digits] [--forget 3] [--methods vdu,ga,esd,salun] [--checkpoints 2,3,5] [--iterations 5,10]
    python -m unlearning bench speed [--parts esd,press] [--model digits,shapes-sd]
    python -m unlearning bench robustness [--model shapes-sd] --methods esd-x,esd-u,uce,... --concepts star,triangle [--set METHOD.KEY=VALUE]
    python -m unlearning bench classifier [--scenario class|random] [--forget-class 3] [--fraction 0.1] [--set key=value ...]
    python -m unlearning run --model shapes-3d --method skip3d --forget "blue pyramid" --anchor "blue cube" --preserve "red sphere,green cylinder" --out DIR
    python -m unlearning bench protocol --model MODEL --methods LIST|all --concepts LIST|FILE|all [--seeds N [--first-seed K]] [--out DIR]
        [--jobs J] [--set method.key=value ...] [--executor local|ray [--address ADDR]]
    python -m unlearning bench nudity --model SD --prompts I2P.csv [--run DIR | --edit FILE] [--threshold 0.6] [--limit N]
    python -m unlearning zero123 --forget "blue pyramid" --override "blue cube" --remain "red sphere,green cylinder" [--out DIR]
                                 (the same run with the speedup over the run without skipping and the sampling table)
    python -m unlearning rehearse --arch sd15 --method esd|all [--resolution 256] [--dtype bfloat16] [--iterations 2] [--out DIR]
    python -m unlearning methods [--model digits]
    python -m unlearning models

Errors a user can fix print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import UnlearningError

log = logging.getLogger("unlearning")


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    from .errors import InputError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set takes key=value, got '{pair}'.")
        out[key.strip()] = value.strip()
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .run_folder import check_writable
    from .runner import RunRequest

    check_writable(Path(args.out))  # before loading anything
    request = RunRequest(
        model=args.model, method=args.method, forget=args.forget.split(","), anchor=args.anchor,
        preserve=args.preserve.split(",") if args.preserve else None, settings=_parse_sets(args.set),
        seed=args.seed, device=args.device, forget_samples=args.forget_samples, retain_samples=args.retain_samples,
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale, sampler=args.sampler,
        input_polar=args.input_polar, sampling_skips=_ints(args.sampling_skips, "--sampling-skips") or None,
        prompts=args.prompt or None, questions=args.questions,
    )
    metrics = _run_and_report(request, Path(args.out))
    summary = {k: metrics.get(k) for k in ("forget_rate", "retain_accuracy", "pul", "override_rate", "perplexity", "timings")
               if k in metrics}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _run_and_report(request, out: Path | None) -> dict:
    """prepare + the runner's run_to_folder with progress on stderr; the final metrics. Without ``out`` the run folder
    is written to a scratch folder and not kept."""
    import tempfile

    from .runner import prepare, run_to_folder

    run = prepare(request)
    print(f"{run.spec.label} on {run.model_id} ({run.adapter.device}, {str(run.adapter.dtype).replace('torch.', '')}): "
          f"forget {', '.join(run.task.forget)}", file=sys.stderr)
    last_pct, metrics = -1, {}
    with tempfile.TemporaryDirectory(prefix="unlearning-run-") as scratch:
        for event in run_to_folder(run, out if out is not None else Path(scratch) / "run"):
            if event.kind == "train":
                pct = 100 * event.step.step // event.step.total
                if pct // 10 != last_pct // 10 or event.step.step == event.step.total:
                    print(f"  step {event.step.step}/{event.step.total}  loss {event.step.loss:.4f}", file=sys.stderr)
                    last_pct = pct
            elif event.kind == "done":
                metrics = event.state.metrics
    if out is not None:
        print(f"run written to {out}", file=sys.stderr)
    return metrics


def cmd_relearn(args: argparse.Namespace) -> int:
    """The relearning test on a finished run folder (unlearning.runner.relearn_run): fine-tune, then three forget rates."""
    from .attacks.relearn import format_table
    from .methods.base import RunContext
    from .models.catalog import resolve
    from .runner import read_request, relearn_run

    folder = Path(args.run)
    request = read_request(folder)
    if args.device:
        request.device = args.device
    _, _, family = resolve(request.model)
    if family == "causal-lm":  # the relearning attack on forget-domain text
        return cmd_relearn_text(args, folder, request)

    def on_step(report) -> None:
        if report.step == report.total or report.step % max(1, report.total // 10) == 0:
            print(f"  step {report.step}/{report.total}  loss {report.loss:.4f}", file=sys.stderr)

    for event in relearn_run(folder, _parse_sets(args.set), device=args.device, ctx=RunContext(on_step)):
        if event.kind == "finetune":
            print(f"relearning test ({event.settings.mode}) on {event.run.model_id}: {event.run.spec.name} edit forgetting "
                  f"{', '.join(event.run.task.forget)}", file=sys.stderr)
        elif event.kind == "done":
            print(format_table(event.record["report"]))
            print(f"written to {folder / 'relearn.json'}", file=sys.stderr)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    """An adversarial attack on a finished run: attack.json, the adversarial prompt / embedding, three image rows."""
    from .attacks.adversarial import execute_attack, format_attack, prepare_attack
    from .methods.base import RunContext

    prepared = prepare_attack(args.run, args.kind, prompts_file=args.prompts, overrides=_parse_sets(args.set), out=args.out,
                              device=args.device)
    print(f"{prepared.spec.label} on {prepared.run['model']}: {prepared.run['edit_method'] or prepared.run['method']} edit "
          f"forgetting {', '.join(prepared.task.forget)}, {len(prepared.items)} prompts", file=sys.stderr)

    def on_step(report) -> None:
        if report.step == report.total or report.step % max(1, report.total // 10) == 0:
            print(f"  step {report.step}/{report.total}  loss {report.loss:.4f}", file=sys.stderr)

    result, folder = execute_attack(prepared, RunContext(on_step))
    print(format_attack(result))
    print(f"written to {folder}", file=sys.stderr)
    return 0



def cmd_relearn_text(args: argparse.Namespace, folder: Path, request) -> int:
    """A language-model run folder: the relearning attack on forget-domain text (``attacks/relearn_lm.py``)."""
    import dataclasses

    from .atomic import write_text_atomic
    from .attacks.relearn_lm import text_relearn_report, text_relearn_settings
    from .edit import Edit
    from .errors import InputError
    from .hosting.profile import get_profile
    from .runner import prepare

    settings = text_relearn_settings(_parse_sets(args.set))  # unknown settings fail before any work
    if settings.steps > get_profile().limits.max_iterations:
        raise InputError(f"steps = {settings.steps} is more than this instance allows ({get_profile().limits.max_iterations}).")
    run = prepare(request)
    edit = Edit.load(folder / "edit.safetensors")
    print(f"relearning attack ({settings.data}-domain text) on {run.model_id}: {edit.method or run.spec.name} edit forgetting "
          f"{', '.join(run.task.forget)}", file=sys.stderr)
    report = text_relearn_report(run.adapter, run.task, edit.params, settings, request.questions)
    out = {"run": str(folder), "method": run.spec.name, "forget": run.task.forget, "retain": run.task.retain,
           "settings": dataclasses.asdict(settings), "report": report}
    write_text_atomic(folder / "relearn.json", json.dumps(out, indent=2, default=str) + "\n")
    print(f"{'':36} {'forget acc':>10} {'retain acc':>10}   ({report['question_format']} format; {report['attack']})")
    for r in report["rows"]:
        print(f"{r['model']:36} {r['forget_rate']:10.3f} {r['retain_accuracy']:10.3f}")
    print(f"relearn gap (after fine-tune - after unlearning): {100 * report['relearn_gap']:+.1f} points")
    print(f"written to {folder / 'relearn.json'}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import export
    from .hosting.profile import get_profile
    from .runner import load_run

    if args.push_to_hub and args.format != "bundle":
        from .errors import InputError

        raise InputError("--push-to-hub uploads a folder: use it with --format bundle.")
    if args.format == "bundle":
        out, notes = export.export_bundle(Path(args.run), Path(args.out), rank=args.rank)
        print(f"{', '.join(sorted(p.name for p in out.iterdir()))} written to {out}; " + " ".join(notes), file=sys.stderr)
        if args.push_to_hub:
            url = export.push_to_hub(out, args.push_to_hub, allowed=get_profile().hub_export)
            print(f"pushed to {url}", file=sys.stderr)
        return 0
    run, edit = load_run(Path(args.run))
    if args.format == "delta":
        out = export.export_delta(run.adapter, edit, Path(args.out))
        print(f"delta (new - base of {len(edit.params)} changed tensors) written to {out}", file=sys.stderr)
    elif args.format == "lora":
        report = export.export_lora(run.adapter, edit, Path(args.out), rank=args.rank)
        print(f"LoRA written to {args.out} ({report.summary()}); load it with pipe.load_lora_weights", file=sys.stderr)
    else:
        out = export.export_diffusers(run.adapter, edit, Path(args.out))
        print(f"unlearned model written to {out} (load it with the same code as the base: from_pretrained)", file=sys.stderr)
        if note := export.pipeline_setting_note(edit):
            print(note, file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .errors import InputError

    if args.which == "classifier":
        from .benchmarks.classifier import cmd_bench_classifier

        args.settings = _parse_sets(args.set)
        return cmd_bench_classifier(args)
    if args.which == "vdu":
        return cmd_bench_vdu(args)
    if args.which == "speed":
        return cmd_bench_speed(args)
    if args.which == "robustness":
        return cmd_bench_robustness(args)
    if args.which == "lm":
        from .benchmarks.lm import cmd_bench_lm

        args.forget = args.forget or "hazard"
        return cmd_bench_lm(args)
    if args.which == "protocol":
        return cmd_bench_protocol(args)
    if args.which == "nudity":
        return cmd_bench_nudity(args)
    from .benchmarks.scaling import DEFAULT_METHODS, RESULTS, ScalingConfig, format_table, run_scaling, save_results

    counts = tuple(_ints(args.counts, "--counts"))
    if not counts or min(counts) < 1 or max(counts) > 64:
        raise InputError("--counts must be between 1 and 64 concepts (shapes-sd has 64 colour-shape pairs).")
    methods = tuple(m.strip() for m in (args.methods or ",".join(DEFAULT_METHODS)).split(",") if m.strip())
    cfg = ScalingConfig(model=args.model or "shapes-sd", counts=counts, methods=methods, seed=args.seed)
    rows = []
    for row in run_scaling(cfg):
        rows.append(row)
        retain = "n/a" if row["retain_accuracy"] is None else f"{row['retain_accuracy']:.2f}"
        print(f"  {row['method']:>8} k={row['k']:>2}: forget {row['forget_rate']:.2f} retain {retain} "
              f"({row['seconds']:.2f} s)", file=sys.stderr)
    path = save_results(rows, cfg, Path(args.out) if args.out else RESULTS)
    print(format_table(rows))
    print(f"written to {path}", file=sys.stderr)
    return 0


def cmd_bench_robustness(args: argparse.Namespace) -> int:
    """The resilience leaderboard: methods x concepts, each cell a run folder with its attacks beside it."""
    from .attacks.adversarial import ATTACKS
    from .benchmarks import robustness as R
    from .errors import InputError

    if not args.concepts:
        raise InputError("name the concepts with --concepts (e.g. star,triangle,cross,diamond on shapes-sd; 0,3,5,8 on digits).")
    overrides: dict[str, dict] = {}
    attack_overrides: dict[str, dict] = {}
    relearn: dict = {}
    for key, value in _parse_sets(args.set).items():
        owner, _, name = key.partition(".")
        if not name:
            raise InputError(f"--set for the robustness bench is METHOD.KEY=VALUE or ATTACK.KEY=VALUE (e.g. "
                             f"unlearndiffatk.iterations=20), got '{key}'.")
        if owner == "relearn":
            relearn[name] = value
        else:
            (attack_overrides if owner in ATTACKS else overrides).setdefault(owner, {})[name] = value
    model = args.model or "shapes-sd"
    methods = tuple(m.strip() for m in (args.methods or ",".join(R.DEFAULT_METHODS)).split(",") if m.strip())
    cfg = R.RobustnessConfig(model=model, methods=methods, concepts=tuple(c.strip() for c in args.concepts.split(",") if c.strip()),
                             seed=args.seed, out=Path(args.out) if args.out else Path("runs") / "robustness" / Path(model).name,
                             overrides=overrides, attack_overrides=attack_overrides, relearn_overrides=relearn,
                             forget_samples=args.forget_samples or 16, retain_samples=args.retain_samples or 4)
    rows = []
    for row in R.run_robustness(cfg, on_cell=lambda text: print(f"  {text}", file=sys.stderr, flush=True)):
        rows.append(row)
        print(f"  {row['method']} / {row['concept']}: UA {row['ua']}, UDA {row['uda_before']} -> {row['uda_after']}, "
              f"inversion {row['inversion_after']}, relearn {row['relearn_forget']} ({row['cell_s']:.0f} s)", file=sys.stderr, flush=True)
    path = R.save_results(rows, cfg)
    print(R.format_leaderboard(R.summarise(rows)))
    if len(kinds := R.by_kind(rows)) > 1:
        print("\nClosed-form vs trained erasures, pooled over their cells:\n" + R.format_by_kind(kinds))
    print(f"written to {path}", file=sys.stderr)
    return 0


def _ints(text: str, flag: str) -> list[int]:
    """'2,3,5' -> [2, 3, 5]; '' -> []; anything else that is not whole numbers is one clear error."""
    from .errors import InputError

    try:
        return [int(x) for x in text.split(",")] if text.strip() else []
    except ValueError:
        raise InputError(f"{flag} takes whole numbers separated by commas, got '{text}'.") from None


def cmd_bench_vdu(args: argparse.Namespace) -> int:
    """VDU vs gradient ascent / ESD / SalUn on one forget subset, K ablation; table to stdout, rows to --out."""
    from .atomic import write_text_atomic
    from .benchmarks import vdu as D
    from .errors import InputError
    from .methods.base import RunContext, UnlearnTask
    from .models.catalog import load_adapter, resolve
    from .runner import parse_forget

    model = args.model or "digits"
    if not args.forget and model != "digits":
        raise InputError("name the concept to forget with --forget (the default, 3, is a digits concept).")
    model_id, _, _ = resolve(model)
    adapter = load_adapter(model, args.device)
    forget, _ = parse_forget(adapter, [c.strip() for c in (args.forget or "3").split(",")])
    task = UnlearnTask(forget=forget, retain=adapter.default_retain(forget), seed=args.seed)
    overrides = _method_sets(args.set, "the VDU comparison")
    rows_to_run = D.variants([m.strip() for m in (args.methods or ",".join(D.METHODS)).split(",") if m.strip()],
                             _ints(args.checkpoints, "--checkpoints"), _ints(args.iterations, "--iterations"), overrides,
                             forget_size=args.forget_size)
    args.forget_samples, args.retain_samples = args.forget_samples or 32, args.retain_samples or 8
    print(f"{model}: forget {forget}, {len(task.retain)} retained concepts, seed {args.seed}, {len(rows_to_run)} runs", file=sys.stderr)
    rows = []
    for row in D.run_comparison(adapter, model_id, task, rows_to_run, forget_samples=args.forget_samples,
                                retain_samples=args.retain_samples, ctx=RunContext()):
        rows.append(row)
        print(f"  {row['label']}: forget {row['forget_rate']}, u-FID {row['u_fid']}, retain {row['retain_accuracy']}", file=sys.stderr, flush=True)
    print(D.format_table(rows))
    if args.out:
        write_text_atomic(Path(args.out), json.dumps({"model": model, "forget": forget, "retain": task.retain, "seed": args.seed,
                                                       "forget_samples": args.forget_samples, "retain_samples": args.retain_samples,
                                                       "rows": rows}, indent=2, default=str) + "\n")
        print(f"written to {args.out}", file=sys.stderr)
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    """ESD reference vs cached trajectories, and the app's first press; tables to stdout, results to --out."""
    from .benchmarks import speed
    from .errors import InputError

    parts = [p.strip() for p in (args.parts or "esd,press").split(",") if p.strip()]
    if bad := sorted(set(parts) - {"esd", "press"}):
        raise InputError(f"--parts takes esd and / or press, got {', '.join(bad)}.")
    models = [m.strip() for m in (args.model or "digits,shapes-sd").split(",") if m.strip()]
    if bad := sorted(set(models) - set(speed.OLD_TUNED)):
        raise InputError(f"bench speed measures the embedded twins {', '.join(speed.OLD_TUNED)}; got {', '.join(bad)}.")
    result = speed.run_speed(parts, models, seed=args.seed, forget_samples=args.forget_samples or 32,
                             retain_samples=args.retain_samples or 8)
    print(speed.format_tables(result))
    print(f"written to {speed.save(result, Path(args.out) if args.out else speed.RESULTS)}", file=sys.stderr)


def _method_sets(pairs: list[str], what: str) -> dict[str, dict[str, str]]:
    """--set METHOD.KEY=VALUE pairs as {method: {key: value}}."""
    from .errors import InputError

    overrides: dict[str, dict] = {}
    for key, value in _parse_sets(pairs).items():
        method, _, name = key.partition(".")
        if not name:
            raise InputError(f"--set for {what} is METHOD.KEY=VALUE (e.g. esd.iterations=40), got '{key}'.")
        overrides.setdefault(method.strip().lower().replace("-", "_"), {})[name] = value
    return overrides


def cmd_bench_protocol(args: argparse.Namespace) -> int:
    """Every method x every concept x seeds in UnlearnCanvas's columns; resumable; table to stdout."""
    from .benchmarks import protocol as P
    from .benchmarks.cells import safe_name
    from .benchmarks.protocol_results import format_table, write_outputs
    from .errors import InputError

    seeds = _ints(args.seeds or "1", "--seeds")
    if len(seeds) != 1:
        raise InputError(f"--seeds for the protocol is a count N (seeds 0..N-1), e.g. --seeds 3; got '{args.seeds}'.")
    model = args.model or "shapes-sd"
    out = Path(args.out) if args.out else Path("bench/results") / f"protocol-{safe_name(model)}"
    config = P.ProtocolConfig(model=model, methods=args.methods or "all", concepts=args.concepts or "all",
                              seeds=seeds[0], first_seed=args.first_seed, out=out,
                              jobs=args.jobs, overrides=_method_sets(args.set, "the protocol"), executor=args.executor,
                              address=args.address, device=args.device, samples_per_prompt=args.samples_per_prompt,
                              num_inference_steps=args.steps, guidance_scale=args.guidance_scale, classifier=args.classifier,
                              keep_edits=not args.no_edits)
    protocol = P.resolve_protocol(config)
    print(f"protocol on {protocol.model_id}: {len(protocol.methods)} methods x {len(protocol.concepts)} concepts x "
          f"{len(protocol.seeds)} seed(s); {protocol.plan.samples_per_prompt} image(s) per prompt, "
          f"{len(protocol.plan.concept_set.grid())} prompts; scored by {protocol.judge}; cells in {protocol.store.root}",
          file=sys.stderr)
    if args.collect:  # the table of what is stored; missing cells are listed in protocol.json, not run
        result = P.collect(protocol)
        if not result["rows"] and not result["original"]["rows"]:
            raise InputError(f"--collect found no measured cells for these methods and concepts under {protocol.store.root}; "
                             "run the command without --collect first.")
    else:
        result = P.run_protocol(protocol)
    paths = write_outputs(result, out)
    print(format_table(result))
    if result["failed"]:
        print(f"{len(result['failed'])} cell(s) failed (the method's own error, stored): "
              + "; ".join(f"{f['method']} / {f['concept']}: {f['error']}" for f in result["failed"][:5]), file=sys.stderr)
    print(f"written to {paths['json']}, {paths['csv'].name}, {paths['heatmap'].name}", file=sys.stderr)
    return 0


def cmd_bench_nudity(args: argparse.Namespace) -> int:
    """NudeNet counts per exposed class over an I2P-style prompt file, original vs an edit; table to stdout."""
    from .atomic import write_text_atomic
    from .benchmarks import nudity as N
    from .edit import Edit
    from .errors import InputError
    from .models.catalog import load_adapter

    if not args.prompts:
        raise InputError("give the prompt file with --prompts (CSV: prompt, evaluation_seed, evaluation_guidance).")
    if args.run and args.edit:
        raise InputError("give --run or --edit, not both.")
    rows = N.read_prompts(args.prompts, limit=args.limit)
    edit = Edit.load(Path(args.run) / "edit.safetensors") if args.run else Edit.load(args.edit) if args.edit else None
    adapter = load_adapter(args.model or "CompVis/stable-diffusion-v1-4", args.device)
    report = N.nudity_report(adapter, edit, rows, threshold=args.threshold, num_inference_steps=args.steps)
    print(N.format_report(report))
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
        print(f"written to {args.out}", file=sys.stderr)
    return 0


def cmd_zero123(args: argparse.Namespace) -> int:
    """``run --method skip3d`` on a novel-view model with the speedup over the run without skipping (same seed, same
    process) and the sampling table at skip 0 / 8 / 12 / 16; tables to stdout, the run folder to --out."""
    from .run_folder import check_writable
    from .runner import RunRequest

    out = Path(args.out) if args.out else None
    if out is not None:
        check_writable(out)
    if args.save_model and out is None:
        from .errors import InputError

        raise InputError("--save-model writes into the run folder: give --out too.")
    request = RunRequest(
        model=args.model, method="skip3d", forget=[args.forget], anchor=args.override,
        preserve=[r.strip() for r in args.remain.split(",") if r.strip()],
        settings={"measure_speedup": not args.no_plain, **_parse_sets(args.set)}, seed=args.seed, input_polar=args.polar,
        forget_samples=8, retain_samples=8, sampling_skips=[0, 8, 12, 16],  # one seed: every input seen from 8 azimuths
    )
    m = _run_and_report(request, out)
    print(format_view_tables(m))
    if args.save_model:
        from .export import export_diffusers
        from .runner import load_run

        run, edit = load_run(out)
        export_diffusers(run.adapter, edit, out / "model")
        print(f"unlearned model (Zero123 layout) written to {out / 'model'}", file=sys.stderr)
    return 0


def format_view_tables(m: dict) -> str:
    """A novel-view run's metrics as text: views vs ground truth, the sampling table, the unlearning timings."""
    def f(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    lines = ["views | object | model | compared with | SSIM | PSNR | LPIPS | evaluator shape share"]
    for r in m.get("ground_truth", {}).get("rows", []):
        lines.append(" | ".join([r["views"], r["object"], r["model"], r["against"], f(r["ssim"]), f(r["psnr"], 2),
                                 f(r["lpips"]) if r["lpips"] is not None else "unavailable", f(r["shape_rate"], 2)]))
    if m.get("sampling"):
        lines += ["", "skip | s/view | speedup | paper | SSIM | PSNR | evaluator-FID"]
        for r in m["sampling"]:
            lines.append(f"{r['skip']} | {r['seconds_per_view']:.4f} | {f(r['speedup'], 2)}x | {r['paper_speedup'] or '-'} | "
                         f"{f(r.get('ssim'))} | {f(r.get('psnr'), 2)} | {f(r.get('evaluator_fid'), 2)}")
    t = m.get("timings", {}).get("method", {})
    if t:
        line = f"unlearning: {t['unlearn_s']:.1f} s" + (" with skipping" if "speedup" in t else "")
        if "speedup" in t:
            line += (f", {t['plain_unlearn_s']:.1f} s without: {t['speedup']:.2f}x (paper {t.get('paper_speedup') or '-'})")
        lines += ["", line]
    return "\n".join(lines)


def cmd_rehearse(args: argparse.Namespace) -> int:
    """Full-size rehearsal (random weights, real architecture); ``--method all`` runs each method in its own process."""
    import subprocess

    from . import rehearsal as R
    from .errors import InputError
    from .models.architectures import names

    if args.arch not in names():
        raise InputError(f"unknown architecture '{args.arch}'; choose one of {', '.join(names())}.")
    out = Path(args.out or f"runs/rehearsal/{args.arch}{'-tiny' if args.tiny else ''}")
    methods = R.methods_for(args.arch) if args.method == "all" else [args.method]
    settings = _parse_sets(args.set)
    results = []
    for method in methods:
        target = out / method
        if len(methods) > 1:  # a fresh process per method: its own peak resident memory
            cmd = [sys.executable, "-m", "unlearning", "rehearse", "--arch", args.arch, "--method", method, "--dtype", args.dtype,
                   "--iterations", str(args.iterations), "--out", str(out), "--seed", str(args.seed), "--device", args.device,
                   *(["--resolution", str(args.resolution)] if args.resolution else []), *(["--tiny"] if args.tiny else []),
                   *[x for pair in args.set for x in ("--set", pair)]]
            if subprocess.run(cmd).returncode != 0:
                print(f"error: the {method} rehearsal failed (its output is above)", file=sys.stderr)
                return 1
            results.append(json.loads((target / "rehearsal.json").read_text()))
            continue
        result = R.rehearse(args.arch, method, resolution=args.resolution, dtype=args.dtype, iterations=args.iterations,
                            settings=settings, seed=args.seed, device=args.device, tiny=args.tiny,
                            on_progress=lambda text: print(text, file=sys.stderr, flush=True))
        path = R.write(result, target)
        print(f"written to {path}", file=sys.stderr)
        results.append(result)
    print(R.TABLE_HEADER)
    for result in results:
        print(R.format_row(result))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import METHODS

    for spec in [v for s in METHODS.values() for v in (s, *s.variants.values())]:
        print(f"{spec.name}: {spec.label} [{', '.join(spec.families)}]\n  {spec.summary}\n  {spec.citation}")
        for row in spec.describe(args.model):
            tuned = f" (tuned for {args.model}: {row['value']})" if row["tuned"] else ""
            extra = f" one of {', '.join(map(str, row['choices']))};" if row.get("choices") else ""
            only = f" ({', '.join(row['families'])} models only)" if row.get("families") else ""
            print(f"    --set {row['name']}=<{row['type']}>  paper default {row['paper']}{tuned};{extra} {row['help']}{only}")
        print()
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.catalog import CATALOG, HUB_MODELS, hub_availability

    for entry in CATALOG.values():
        print(f"{entry.id}: {entry.label} [{entry.family}]\n  {entry.description}")
    for repo, family in HUB_MODELS.items():
        ok, why = hub_availability(repo)
        print(f"{repo} [{family}]: {'available' if ok else 'unavailable'}: {why}")
    print("or any hub id / local folder in the same layout (model_index.json + components).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unlearning", description="Machine unlearning for diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: $UNLEARNING_THREADS, $OMP_NUM_THREADS, else one per core; "
                        "a bench with --jobs splits them); give 1 when something else runs torch on the same cores")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="enforce a hosted profile (YAML), e.g. spaces_config.yaml; default: the local profile "
                        "(every model and method), except on a Hugging Face Space or with $UNLEARNING_CONFIG")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="unlearn a concept and compare original vs unlearned")
    run.add_argument("--model", default="digits", help="embedded model id, hub id (owner/name) or local folder")
    run.add_argument("--method", default="esd")
    run.add_argument("--forget", required=True, help="concept(s) to forget, comma-separated; 'star->circle' sets an anchor")
    run.add_argument("--anchor", default=None, help="map the forgotten concept to this one (methods that use an anchor)")
    run.add_argument("--preserve", default=None, help="concepts to keep, comma-separated (default: all others)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a method setting")
    run.add_argument("--out", required=True, help="run folder to write")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--forget-samples", type=int, default=16)
    run.add_argument("--retain-samples", type=int, default=4, help="comparison samples per retained concept")
    run.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    run.add_argument("--guidance-scale", type=float, default=None)
    run.add_argument("--sampler", default="ddim", help="ddim (default) or dpm-solver, for the comparison images")
    run.add_argument("--input-polar", type=float, default=None,
                     help="novel-view models: polar angle of the input views in degrees (90 = level; default 75)")
    run.add_argument("--sampling-skips", default="", metavar="0,8,12,16",
                     help="novel-view models: also time sampling with timestep skipping at these skips on the unlearned model")
    run.add_argument("--prompt", action="append", default=[], help="text-to-image: an extra prompt to compare; language "
                     "models: a prompt both models continue (repeat the flag; default: the model's demo prompts)")
    run.add_argument("--questions", type=int, default=None, help="language models: held-out questions scored per domain "
                     "(default: all)")
    run.set_defaults(func=cmd_run)
    relearn = sub.add_parser("relearn", help="relearning test: fine-tune a run's unlearned model on benign data, re-measure "
                             "(language models: on forget-domain text, the relearning attack)")
    relearn.add_argument("--run", required=True, help="run folder written by 'run --out' (run.json + edit.safetensors)")
    relearn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a relearning setting")
    relearn.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
    relearn.set_defaults(func=cmd_relearn)
    attack = sub.add_parser("attack", help="adversarial attack on a run's unlearned model: UnlearnDiffAtk, concept inversion "
                            "or a prompt file; writes attack.json, the adversarial prompt / embedding and three image rows")
    attack.add_argument("--run", required=True, help="run folder written by 'run --out' (run.json + edit.safetensors)")
    attack.add_argument("--kind", required=True, help="unlearndiffatk, inversion or prompts")
    attack.add_argument("--prompts", default=None, help="prompts: a CSV with prompt and seed columns (I2P / Ring-A-Bell / P4D); "
                        "optional on a model with a built-in prompt set (shapes-sd)")
    attack.add_argument("--out", default=None, help="folder to write (default: <run>/attack-<kind>)")
    attack.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an attack setting")
    attack.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
    attack.set_defaults(func=cmd_attack)
    export = sub.add_parser("export", help="write a run's unlearned model as a full diffusers folder")
    export.add_argument("--run", required=True, help="run folder written by 'run --out'")
    export.add_argument("--out", required=True, help="new folder (diffusers, bundle; must not exist or be empty) or file (delta, lora)")
    export.add_argument("--format", default="diffusers", choices=["diffusers", "delta", "lora", "bundle"],
                        help="diffusers: full model folder; delta: new - base safetensors; lora: SD LoRA file; "
                        "bundle: all of them with a model card")
    export.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the edit's own, exact up to round-off)")
    export.add_argument("--push-to-hub", default=None, metavar="OWNER/NAME",
                        help="upload the bundle (token from HF_TOKEN; only where the hosted profile allows it)")
    export.set_defaults(func=cmd_export)
    bench = sub.add_parser("bench", help="benchmarks: 'scaling' = erase 1..64 concepts with several methods; "
                           "'classifier' = classifier unlearning (UAM's setting) vs retraining; 'speed' = ESD's cached "
                           "trajectories vs the reference, and the app's first press; 'robustness' = attacks and relearning "
                           "on unlearned models; 'lm' = RMU / GA / NegGrad+ with and without UAM on a language model; 'protocol' = "
                           "every method x every concept in UnlearnCanvas's columns; 'nudity' = NudeNet counts over an I2P CSV")
    bench.add_argument("which", choices=["scaling", "classifier", "vdu", "speed", "robustness", "lm", "protocol", "nudity"])
    bench.add_argument("--model", default=None, help="scaling, robustness: default shapes-sd; vdu: default digits; speed: "
                       "default digits,shapes-sd")
    bench.add_argument("--parts", default=None, help="speed: esd and / or press (default both)")
    bench.add_argument("--counts", default="1,2,4,8,16,32,64")
    bench.add_argument("--methods", default=None, help="scaling: default speed,mace,rece,uce,scapre,esd (ESD-x up to 16); "
                       "vdu: default vdu,ga,esd,salun; robustness: default esd-x,esd-u,uce,scapre,salun,resalign,advunlearn; "
                       "protocol: a list or 'all' (every method that applies to the model; the default)")
    bench.add_argument("--concepts", default=None, help="protocol: 'all' (default), a comma-separated list, or a file of concepts "
                       "(one per line, 'object: NAME' / 'style: NAME'; real Stable Diffusion); robustness: concepts, each unlearned "
                       "on its own (e.g. star,triangle)")
    bench.add_argument("--seeds", default=None, help="protocol: N, seeds 0..N-1 (each a separate unlearning run; default 1); "
                       "lm: the seeds every row runs with (default 0,1,2)")
    bench.add_argument("--first-seed", type=int, default=0, help="protocol: the first of the N seeds (default 0): "
                       "--seeds 2 --first-seed 1 adds seeds 1 and 2 to a table measured at seed 0 (a new folder, then "
                       "bench/protocol_merge.py)")
    bench.add_argument("--jobs", type=int, default=1, help="protocol: cells run in parallel processes, threads split between them")
    bench.add_argument("--executor", default="local", choices=["local", "ray"], help="protocol: where cells run")
    bench.add_argument("--address", default=None, help="protocol, ray: the cluster's address (default: a local Ray instance)")
    bench.add_argument("--samples-per-prompt", type=int, default=None,
                       help="protocol: images per grid prompt (default 4 with two kinds of concept, 16 with one)")
    bench.add_argument("--steps", type=int, default=None, help="protocol: sampling steps (default: the model's)")
    bench.add_argument("--guidance-scale", type=float, default=None, help="protocol: guidance (default: the model's)")
    bench.add_argument("--classifier", default=None, help="protocol: a classifier folder that scores the images "
                       "(heads 'object' / 'style'); default: the twin's evaluator, or CLIP zero-shot on real SD")
    bench.add_argument("--no-edits", action="store_true", help="protocol: do not keep each cell's edit (saves disk)")
    bench.add_argument("--collect", action="store_true", help="protocol: write the table, protocol.json and heatmap from the "
                       "cells already stored in --out (missing cells are listed, nothing runs)")
    bench.add_argument("--prompts", default=None, help="nudity: an I2P-style CSV (prompt, evaluation_seed, evaluation_guidance)")
    bench.add_argument("--run", default=None, help="nudity: a run folder whose edit to count (default: the original model only)")
    bench.add_argument("--edit", default=None, help="nudity: an edit file (e.g. a protocol cell's .safetensors)")
    bench.add_argument("--threshold", type=float, default=0.6, help="nudity: NudeNet score threshold (default 0.6, MACE's)")
    bench.add_argument("--limit", type=int, default=None, help="nudity: only the first N prompts")
    bench.add_argument("--forget", default=None, help="vdu: concept(s) to forget (default 3 on digits)")
    bench.add_argument("--checkpoints", default="2,3,5", help="vdu: VDU rows with these K (final weights + K - 1 snapshots)")
    bench.add_argument("--iterations", default="", help="vdu: also sweep VDU and gradient ascent over these step counts")
    bench.add_argument("--forget-size", type=int, default=None, help="vdu: images in the forget subset (default: VDU's tuned value)")
    bench.add_argument("--forget-samples", type=int, default=None, help="vdu, speed, robustness: comparison samples of the "
                       "forget concept (default 32, 32, 16)")
    bench.add_argument("--retain-samples", type=int, default=None, help="vdu, speed, robustness: comparison samples per "
                       "retained concept (default 8, 8, 4)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default=None, help="results JSON (scaling: default bench/results/scaling.json); robustness: "
                       "the folder of cells and robustness.json (default runs/robustness/<model>); protocol: a results folder "
                       "(default bench/results/protocol-MODEL)")
    bench.add_argument("--scenario", default="class", help="classifier: 'class' (forget a class) or 'random' (random samples)")
    bench.add_argument("--forget-class", type=int, default=3, help="classifier, class-wise: the class to forget")
    bench.add_argument("--fraction", type=float, default=0.1, help="classifier, random: share of the training split to forget")
    bench.add_argument("--train-epochs", type=int, default=15, help="classifier: epochs of the original and retrained model")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="classifier: override a method setting (KEY=VALUE); vdu: METHOD.KEY=VALUE, METHOD one of vdu, ga, esd, salun; "
                       "lm: METHOD.KEY=VALUE, METHOD rmu or gradient_ascent; protocol: METHOD.KEY=VALUE")
    bench.add_argument("--no-torchunlearn", action="store_true", help="classifier: skip the torchunlearn row")
    bench.add_argument("--split", default="test", choices=["test", "val"], help="lm: held-out questions scored (val: tuning)")
    bench.add_argument("--retain", default=None, help="lm: retain domain(s) (default: the model's)")
    bench.add_argument("--rows", default=None, help="lm: rows to run, comma-separated (default: all)")
    bench.add_argument("--relearn-steps", type=int, default=0, help="lm: relearning attack steps on forget text (0: none)")
    bench.set_defaults(func=cmd_bench)
    z123 = sub.add_parser("zero123", help="novel-view unlearning (skip3d): forget object -> override object, with the speedup "
                          "measured in the same run ('run --method skip3d' with timings)")
    z123.add_argument("--model", default="shapes-3d", help="shapes-3d, a hub id (kxic/zero123-xl) or a local Zero123 folder")
    z123.add_argument("--forget", default="blue pyramid", help="twin object ('<colour> <shape>') or an image file")
    z123.add_argument("--override", default="blue cube", help="twin object or image file drawn instead of the forget object")
    z123.add_argument("--remain", default="red sphere,green cylinder,orange torus", help="comma-separated objects / image files")
    z123.add_argument("--polar", type=float, default=75.0, help="input view polar angle in degrees (90 = level)")
    z123.add_argument("--seed", type=int, default=0)
    z123.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a skip3d setting")
    z123.add_argument("--no-plain", action="store_true", help="skip the run without timestep skipping (no speedup measured)")
    z123.add_argument("--out", default=None, help="run folder to write (run.json, metrics.json, edit.safetensors, images/)")
    z123.add_argument("--save-model", action="store_true", help="also write the unlearned model (Zero123 layout) into --out/model")
    z123.set_defaults(func=cmd_zero123)
    reh = sub.add_parser("rehearse", help="full-size rehearsal: a method on a real architecture built from its published config "
                         "(random weights), with timings, peak memory and the projected GPU memory")
    reh.add_argument("--arch", required=True, help="sd14, sd15, sd21-base, sdxl or zero123-xl")
    reh.add_argument("--method", default="all", help="a method name, or 'all' (every method that applies, one process each)")
    reh.add_argument("--resolution", type=int, default=None, help="image side in pixels (default 256, quick; --tiny: 64); "
                     "the projection scales to the user's 512 (SD 1.x / 2.1-base) or 1024 (SDXL)")
    reh.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                     help="the frozen base's dtype; a half one also turns on autocast in it (float16: for GPUs)")
    reh.add_argument("--iterations", type=int, default=2, help="steps of an iterative method (closed-form ones run in full)")
    reh.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a method setting")
    reh.add_argument("--out", default=None, help="folder; each method writes <out>/<method>/rehearsal.json (default runs/rehearsal/<arch>)")
    reh.add_argument("--seed", type=int, default=0)
    reh.add_argument("--device", default="cpu", help="cpu (the point of a rehearsal), or cuda on a GPU")
    reh.add_argument("--tiny", action="store_true", help="the same architecture at test widths (seconds; for tests)")
    reh.set_defaults(func=cmd_rehearse)
    methods = sub.add_parser("methods", help="list methods and their settings")
    methods.add_argument("--model", default="digits", help="show the values tuned for this model")
    methods.set_defaults(func=cmd_methods)
    models = sub.add_parser("models", help="list embedded models")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from .hosting.profile import install_log_redaction, use_profile
        from .threads import configure_threads

        install_log_redaction()
        use_profile(args.profile)
        configure_threads(explicit=args.threads)  # the total; a bench with --jobs splits it (threads_per_job)
        return args.func(args)
    except UnlearningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the disk filled up while writing the run folder
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
