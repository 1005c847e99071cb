"""Headless use: runs, the method list, the model list.

    python -m unlearning run --model digits --method esd --forget 3 --out DIR [--set key=value ...]
    python -m unlearning relearn --run DIR [--set key=value ...]
    python -m unlearning export --run DIR --out MODEL_DIR      (full diffusers folder of the unlearned model)
    python -m unlearning export --run DIR --out FILE --format delta|lora [--rank N]
    python -m unlearning export --run DIR --out DIR --format bundle [--push-to-hub owner/name]
    python -m unlearning bench scaling [--counts 1,2,4,8,16] [--methods scapre,uce,esd]
    python -m unlearning bench vdu [--model digits] [--forget 3] [--methods vdu,ga,esd,salun] [--checkpoints 2,3,5] [--iterations 5,10]
    python -m unlearning bench classifier [--scenario class|random] [--forget-class 3] [--fraction 0.1] [--set key=value ...]
    python -m unlearning bench protocol --model MODEL --methods LIST|all --concepts LIST|FILE|all [--seeds N] [--out DIR]
        [--jobs J] [--set method.key=value ...] [--executor local|ray [--address ADDR]]
    python -m unlearning bench nudity --model SD --prompts I2P.csv [--run DIR | --edit FILE] [--threshold 0.6] [--limit N]
    python -m unlearning zero123 --forget "blue pyramid" --override "blue cube" --remain "red sphere,green cylinder" [--out DIR]
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
    from .runner import RunRequest, execute, prepare

    check_writable(Path(args.out))  # before loading anything
    request = RunRequest(
        model=args.model, method=args.method, forget=args.forget.split(","), anchor=args.anchor,
        preserve=args.preserve.split(",") if args.preserve else None, settings=_parse_sets(args.set),
        seed=args.seed, device=args.device, forget_samples=args.forget_samples, retain_samples=args.retain_samples,
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale, sampler=args.sampler,
    )
    run = prepare(request)
    print(f"{run.spec.label} on {run.model_id} ({run.adapter.device}, {str(run.adapter.dtype).replace('torch.', '')}): "
          f"forget {', '.join(run.task.forget)}", file=sys.stderr)
    last_pct = -1
    for event in execute(run, out_dir=Path(args.out)):
        if event.kind == "train":
            pct = 100 * event.step.step // event.step.total
            if pct // 10 != last_pct // 10 or event.step.step == event.step.total:
                print(f"  step {event.step.step}/{event.step.total}  loss {event.step.loss:.4f}", file=sys.stderr)
                last_pct = pct
        elif event.kind == "done":
            m = event.state.metrics
            summary = {k: m.get(k) for k in ("forget_rate", "retain_accuracy", "pul", "timings")}
            print(json.dumps(summary, indent=2, default=str))
            print(f"run written to {event.folder}", file=sys.stderr)
    return 0


def cmd_relearn(args: argparse.Namespace) -> int:
    """The relearning test on a finished run folder: benign fine-tune, then three forget rates."""
    import dataclasses

    from .atomic import write_text_atomic
    from .attacks.relearn import format_table, relearn, relearn_report, relearn_settings
    from .edit import Edit
    from .errors import InputError
    from .hosting.profile import get_profile
    from .methods.base import RunContext
    from .models.catalog import resolve
    from .runner import prepare, read_request

    folder = Path(args.run)
    request = read_request(folder)
    if args.device:
        request.device = args.device
    model_id, _, _ = resolve(request.model)
    settings = relearn_settings(model_id, _parse_sets(args.set))  # unknown settings fail before any work
    max_steps = get_profile().limits.max_iterations
    if settings.steps > max_steps:
        raise InputError(f"steps = {settings.steps} is more than this instance allows ({max_steps}).")
    edit = Edit.load(folder / "edit.safetensors")
    run = prepare(request)
    print(f"relearning test ({settings.mode}) on {run.model_id}: {edit.method or run.spec.name} edit forgetting "
          f"{', '.join(run.task.forget)}", file=sys.stderr)

    def on_step(report) -> None:
        if report.step == report.total or report.step % max(1, report.total // 10) == 0:
            print(f"  step {report.step}/{report.total}  loss {report.loss:.4f}", file=sys.stderr)

    result = relearn(run.adapter, edit, run.task, settings, RunContext(on_step))
    report = relearn_report(run.adapter, run.task, edit, result.edit, request.forget_samples, request.seed,
                            retain_samples=request.retain_samples, num_inference_steps=request.num_inference_steps,
                            guidance_scale=request.guidance_scale)
    out = {"run": str(folder), "method": run.spec.name, "forget": run.task.forget, "benign": result.benign,
           "settings": dataclasses.asdict(settings), "report": report, "loss_log": result.loss_log,
           "timings": result.timings}
    write_text_atomic(folder / "relearn.json", json.dumps(out, indent=2, default=str) + "\n")
    print(format_table(report))
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
        print(f"model/, delta.safetensors, README.md, run.json written to {out}; " + " ".join(notes), file=sys.stderr)
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
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .errors import InputError

    if args.which == "classifier":
        from .benchmarks.classifier import cmd_bench_classifier

        args.settings = _parse_sets(args.set)
        return cmd_bench_classifier(args)
    if args.which == "vdu":
        return cmd_bench_vdu(args)
    if args.which == "protocol":
        return cmd_bench_protocol(args)
    if args.which == "nudity":
        return cmd_bench_nudity(args)
    from .benchmarks.scaling import RESULTS, ScalingConfig, format_table, run_scaling, save_results

    counts = tuple(_ints(args.counts, "--counts"))
    if not counts or min(counts) < 1 or max(counts) > 32:
        raise InputError("--counts must be between 1 and 32 concepts.")
    methods = tuple(m.strip() for m in (args.methods or "scapre,uce,esd").split(",") if m.strip())
    cfg = ScalingConfig(model=args.model or "shapes-sd", counts=counts, methods=methods, seed=args.seed)
    rows = []
    for row in run_scaling(cfg):
        rows.append(row)
        print(f"  {row['method']:>8} k={row['k']:>2}: forget {row['forget_rate']:.2f} retain {row['retain_accuracy']:.2f} "
              f"({row['seconds']:.1f} s)", file=sys.stderr)
    path = save_results(rows, cfg, Path(args.out) if args.out else RESULTS)
    print(format_table(rows))
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

    model = args.model or "shapes-sd"
    out = Path(args.out) if args.out else Path("bench/results") / f"protocol-{safe_name(model)}"
    config = P.ProtocolConfig(model=model, methods=args.methods or "all", concepts=args.concepts, seeds=args.seeds, out=out,
                              jobs=args.jobs, overrides=_method_sets(args.set, "the protocol"), executor=args.executor,
                              address=args.address, device=args.device, samples_per_prompt=args.samples_per_prompt,
                              num_inference_steps=args.steps, guidance_scale=args.guidance_scale, classifier=args.classifier,
                              keep_edits=not args.no_edits)
    protocol = P.resolve_protocol(config)
    print(f"protocol on {protocol.model_id}: {len(protocol.methods)} methods x {len(protocol.concepts)} concepts x "
          f"{len(protocol.seeds)} seed(s); {protocol.plan.samples_per_prompt} image(s) per prompt, "
          f"{len(protocol.plan.concept_set.grid())} prompts; scored by {protocol.judge}; cells in {protocol.store.root}",
          file=sys.stderr)
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
    """Novel-view unlearning (skip3d) with the speedup measured in the same run; tables to stdout."""
    from . import novel_view as nv
    from .run_folder import check_writable

    if args.out:
        check_writable(Path(args.out))
    settings = _parse_sets(args.set)
    remain = [r.strip() for r in args.remain.split(",") if r.strip()]

    def progress(stage: str, frac: float) -> None:
        print(f"  {stage} {100 * frac:.0f}%", file=sys.stderr)

    result = nv.run(args.model, forget=args.forget, override=args.override, remain=remain, settings=settings,
                    input_polar=args.polar, seed=args.seed, compare_plain=not args.no_plain, on_progress=progress)
    print("views | model | compared with | SSIM | PSNR | LPIPS | evaluator shape share")
    for row in nv.summary_rows(result):
        print(" | ".join(map(str, row)))
    print("\nskip | s/view | speedup | paper | SSIM | PSNR | evaluator-FID")
    for r in result["sampling"]:
        print(f"{r['skip']} | {r['seconds_per_view']:.4f} | {r['speedup']:.2f}x | {r['paper_speedup'] or '-'} | "
              f"{r.get('ssim', float('nan')):.3f} | {r.get('psnr', float('nan')):.2f} | {r.get('evaluator_fid', float('nan')):.2f}")
    t = result["timings"]
    print(f"\nunlearning: {t['unlearn_s_skipping']:.1f} s with skipping" + (
        f", {t['unlearn_s_plain']:.1f} s without: {t['speedup']:.2f}x (paper {t.get('paper_speedup') or '-'})" if "speedup" in t else ""))
    if args.out:
        nv.write_result(result, Path(args.out), save_model=args.save_model)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import METHODS

    for spec in METHODS.values():
        print(f"{spec.name}: {spec.label}\n  {spec.summary}\n  {spec.citation}")
        for row in spec.describe(args.model):
            tuned = f" (tuned for {args.model}: {row['value']})" if row["tuned"] else ""
            extra = f" one of {', '.join(map(str, row['choices']))};" if row.get("choices") else ""
            print(f"    --set {row['name']}=<{row['type']}>  paper default {row['paper']}{tuned};{extra} {row['help']}")
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
    run.set_defaults(func=cmd_run)
    relearn = sub.add_parser("relearn", help="relearning test: fine-tune a run's unlearned model on benign data, re-measure")
    relearn.add_argument("--run", required=True, help="run folder written by 'run --out' (run.json + edit.safetensors)")
    relearn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a relearning setting")
    relearn.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
    relearn.set_defaults(func=cmd_relearn)
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
    bench = sub.add_parser("bench", help="benchmarks: 'scaling' = erase 1..16 concepts with several methods; "
                           "'classifier' = classifier unlearning (UAM's setting) vs retraining; 'vdu'; 'protocol' = every "
                           "method x every concept in UnlearnCanvas's columns")
    bench.add_argument("which", choices=["scaling", "classifier", "vdu", "protocol", "nudity"])
    bench.add_argument("--model", default=None, help="scaling: default shapes-sd; vdu: default digits")
    bench.add_argument("--counts", default="1,2,4,8,16")
    bench.add_argument("--methods", default=None, help="scaling: default scapre,uce,esd; vdu: default vdu,ga,esd,salun; "
                       "protocol: a list or 'all' (every method that applies to the model; the default)")
    bench.add_argument("--concepts", default="all", help="protocol: 'all', a comma-separated list, or a file of concepts "
                       "(one per line, 'object: NAME' / 'style: NAME'; real Stable Diffusion)")
    bench.add_argument("--seeds", type=int, default=1, help="protocol: seeds 0..N-1 (each a separate unlearning run)")
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
    bench.add_argument("--prompts", default=None, help="nudity: an I2P-style CSV (prompt, evaluation_seed, evaluation_guidance)")
    bench.add_argument("--run", default=None, help="nudity: a run folder whose edit to count (default: the original model only)")
    bench.add_argument("--edit", default=None, help="nudity: an edit file (e.g. a protocol cell's .safetensors)")
    bench.add_argument("--threshold", type=float, default=0.6, help="nudity: NudeNet score threshold (default 0.6, MACE's)")
    bench.add_argument("--limit", type=int, default=None, help="nudity: only the first N prompts")
    bench.add_argument("--forget", default=None, help="vdu: concept(s) to forget (default 3 on digits)")
    bench.add_argument("--checkpoints", default="2,3,5", help="vdu: VDU rows with these K (final weights + K - 1 snapshots)")
    bench.add_argument("--iterations", default="", help="vdu: also sweep VDU and gradient ascent over these step counts")
    bench.add_argument("--forget-size", type=int, default=None, help="vdu: images in the forget subset (default: VDU's tuned value)")
    bench.add_argument("--forget-samples", type=int, default=32, help="vdu: comparison samples of the forget concept")
    bench.add_argument("--retain-samples", type=int, default=8, help="vdu: comparison samples per retained concept")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default=None, help="results JSON (scaling: default bench/results/scaling.json); "
                       "protocol: a results folder (default bench/results/protocol-MODEL)")
    bench.add_argument("--scenario", default="class", help="classifier: 'class' (forget a class) or 'random' (random samples)")
    bench.add_argument("--forget-class", type=int, default=3, help="classifier, class-wise: the class to forget")
    bench.add_argument("--fraction", type=float, default=0.1, help="classifier, random: share of the training split to forget")
    bench.add_argument("--train-epochs", type=int, default=15, help="classifier: epochs of the original and retrained model")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="classifier: override a method setting (KEY=VALUE); vdu: METHOD.KEY=VALUE, METHOD one of vdu, ga, esd, salun; "
                       "protocol: METHOD.KEY=VALUE")
    bench.add_argument("--no-torchunlearn", action="store_true", help="classifier: skip the torchunlearn row")
    bench.set_defaults(func=cmd_bench)
    z123 = sub.add_parser("zero123", help="novel-view unlearning (skip3d): forget object -> override object, with timings")
    z123.add_argument("--model", default="shapes-3d", help="shapes-3d, a hub id (kxic/zero123-xl) or a local Zero123 folder")
    z123.add_argument("--forget", default="blue pyramid", help="twin object ('<colour> <shape>') or an image file")
    z123.add_argument("--override", default="blue cube", help="twin object or image file drawn instead of the forget object")
    z123.add_argument("--remain", default="red sphere,green cylinder,orange torus", help="comma-separated objects / image files")
    z123.add_argument("--polar", type=float, default=75.0, help="input view polar angle in degrees (90 = level)")
    z123.add_argument("--seed", type=int, default=0)
    z123.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a skip3d setting")
    z123.add_argument("--no-plain", action="store_true", help="skip the run without timestep skipping (no speedup measured)")
    z123.add_argument("--out", default=None, help="folder for result.json and views.png")
    z123.add_argument("--save-model", action="store_true", help="also write the unlearned model (Zero123 layout) into --out/model")
    z123.set_defaults(func=cmd_zero123)
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

        install_log_redaction()
        use_profile(args.profile)
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
