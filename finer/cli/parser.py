"""The ``finer`` command's arguments: one function per command adds its parser and names its handler.

Each leaf parser sets ``run`` to the function of :mod:`finer.cli.commands` that does its work.
"""

from __future__ import annotations

import argparse

from finer.cli import commands


def _number_type(cast, accept, expected: str):
    """An argparse ``type``: ``cast`` the text and check it with ``accept``, else say what was expected."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # argparse names the type in its messages
    return parse


_positive_int = _number_type(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number_type(float, lambda v: 0 < v < float("inf"), "a positive number")


def _size_or_none(text: str) -> int | str:
    """A grid's resize: a positive integer, or ``none`` (the images as they are, as ``--crop none``)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or none, got {text!r}") from None
SEED_LIMIT = 2**32  # what NumPy's and every generator's seeds accept
_seed = _number_type(int, lambda v: 0 <= v < SEED_LIMIT, "a seed from 0 to 2^32 - 1")


def _add_fused(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fused", default="auto", choices=["auto", "compile", "eager", "off"],
                   help="activations: compile = fused kernels compiled by torch.compile, eager = fused kernels "
                        "without compiling, off = plain autograd; auto = compile for runs of 500+ steps (default)")


def _add_cuda_graph(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--cuda-graph", action="store_true",
                   help=f"record {what} once as a CUDA graph and replay it: one launch per step instead of one per "
                        "kernel (CUDA and full batch only; the first steps run as usual)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to compute (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_model_options(p: argparse.ArgumentParser, *, layers: str, lr: str, k: str) -> None:
    """The model flags shared by every `finer fit` task; the help texts give the task's defaults."""
    p.add_argument("--model", default="finer", help="registry name (see `finer models`; default finer)")
    p.add_argument("--hidden-layers", type=_non_negative_int, help=f"hidden-to-hidden layers ({layers})")
    p.add_argument("--width", type=_positive_int, help="hidden units per layer (default 256)")
    p.add_argument("--lr", type=_positive_float, help=f"learning rate (default: {lr})")
    p.add_argument("--first-bias-scale", type=float, metavar="K",
                   help=f"FINER: first-layer bias ~ U(-K, K) (default {k})")
    p.add_argument("--first-omega", type=_positive_float, help="SIREN/FINER: omega of the first layer")
    p.add_argument("--hidden-omega", type=_positive_float, help="SIREN/FINER: omega of the hidden layers")
    p.add_argument("--scale-grad", action="store_true", help="FINER: backpropagate through |z|+1 (true derivative)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other model option (repeatable)")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is one ``--help`` away); subcommands inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from finer import __version__

    parser = _Parser(prog="finer", description="FINER and its rivals as implicit neural representations.")
    parser.add_argument("--version", action="version", version=f"finer-inr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_models(sub)
    fit_sub = sub.add_parser("fit", help="fit a signal").add_subparsers(dest="task", required=True, metavar="TASK")
    for add in (_add_fit_image, _add_fit_nerf, _add_fit_sdf):
        add(fit_sub)
    for add in (_add_eval, _add_resume, _add_render, _add_analyze):
        add(sub)
    bench_sub = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True, metavar="BENCH")
    for add in (_add_bench_grid, _add_bench_compare, _add_bench_speed, _add_bench_sdf):
        add(bench_sub)
    _name_leaves(parser)
    return parser


def _name_leaves(parser: argparse.ArgumentParser) -> None:
    """Each command's parser knows itself (``args.leaf``), so that an unknown argument is reported with
    that command's usage (``main`` parses known arguments, then lets the leaf refuse the rest)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        parser.set_defaults(leaf=parser)
    for action in subs:
        for sub in action.choices.values():
            _name_leaves(sub)


def _add_models(sub) -> None:
    """`finer models`."""
    p = sub.add_parser("models", help="list the registered models and their defaults")
    p.add_argument("--json", action="store_true", help="print the defaults as JSON")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)  # (accepted as by every command)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=commands.list_models)


def _add_fit_image(fit_sub) -> None:
    """`finer fit image`."""
    p = fit_sub.add_parser("image", help="fit a 2-D image (PNG, JPEG, ...)")
    p.add_argument("path", nargs="?", default=None,
                   help="image file (default: scikit-image's astronaut), or a folder of images (fitted one by one; "
                        "--batch-signals stacks them, when all have one size)")
    p.add_argument("--steps", type=_positive_int, default=1000, help="optimisation steps (default 1000)")
    p.add_argument("--batch-signals", type=_positive_int, default=None, metavar="K",
                   help="with a folder: train K images' networks at once as one batched network (default: one by one)")
    _add_model_options(p, layers="default 3, as in the paper", lr="the method's own",
                       k="PyTorch's for finer, 1 for gauss-finer and wire-finer")
    p.add_argument("--size", type=_positive_int, help="resize so the longer side has SIZE pixels")
    p.add_argument("--crop", help="centre crop N or HxW (before resizing)")
    p.add_argument("--alpha", default="white", choices=["white", "black", "keep", "drop"],
                   help="RGBA images: composite over white (default) or black, keep or drop alpha")
    p.add_argument("--aspect", default="stretch", choices=["stretch", "preserve"],
                   help="coordinates: each axis in [-1,1] (default) or keep the aspect ratio")
    p.add_argument("--batch-size", type=_positive_int, help="random pixels per step (default: all, if they fit)")
    p.add_argument("--eval-every", type=_non_negative_int, default=100,
                   help="steps between full-image PSNR (default 100)")
    p.add_argument("--checkpoint-every", type=_non_negative_int, default=500,
                   help="steps between checkpoints (default 500)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="run folder (default runs/image-NAME-MODEL-TIME)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                   help="training arithmetic: fp32 (default, the paper's), tf32 (CUDA matrix products in "
                        "TensorFloat-32), bf16 (autocast mixed precision); evaluation is always float32")
    _add_cuda_graph(p, "each training step")
    _add_fused(p)
    _add_common(p)
    p.set_defaults(run=commands.fit_image)


def _add_fit_nerf(fit_sub) -> None:
    """`finer fit nerf`."""
    p = fit_sub.add_parser("nerf", help="fit a radiance field to a Blender-format scene")
    p.add_argument("scene", help="scene folder with transforms_{train,test}.json and the images")
    p.add_argument("--model", default="finer", help="registry name for both networks (default finer)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a model option")
    p.add_argument("--views", type=_positive_int, default=25, help="training views, spread over the split (default 25)")
    p.add_argument("--downscale", type=_positive_int, default=2, help="image downscaling factor (default 2)")
    p.add_argument("--steps", type=_positive_int, default=2000, help="optimisation steps (default 2000)")
    p.add_argument("--rays", type=_positive_int, default=1024, help="rays per step (default 1024)")
    p.add_argument("--samples", type=_positive_int, default=64, help="stratified samples per ray (default 64)")
    p.add_argument("--fine", type=_non_negative_int, default=64,
                   help="importance samples per ray (default 64; 0: none)")
    p.add_argument("--lr", type=_positive_float, default=5e-4, help="Adam learning rate (default 5e-4)")
    p.add_argument("--width", type=_positive_int, default=182, help="network width (default 182)")
    p.add_argument("--test-views", type=_positive_int, default=8, help="test views evaluated (default 8)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation and of the sampling (default 0)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    _add_fused(p)
    _add_common(p)
    p.set_defaults(run=commands.fit_nerf)


def _add_fit_sdf(fit_sub) -> None:
    """`finer fit sdf`."""
    p = fit_sub.add_parser("sdf", help="fit the signed distance field of a mesh (OBJ, PLY, STL, OFF)")
    p.add_argument("mesh", help="mesh file")
    p.add_argument("--steps", type=_positive_int, default=2000, help="optimisation steps (default 2000; paper 200000)")
    _add_model_options(p, layers="default 2", lr="1e-4, constant", k="1")
    p.add_argument("--batch-size", type=_positive_int, default=10_000, help="points per step (default 10000)")
    p.add_argument("--pool-size", type=_positive_int, default=1_000_000,
                   help="training points precomputed once; each step's batch is drawn from them (default 1000000)")
    p.add_argument("--resolution", type=_positive_int, default=256, help="marching-cubes grid (default 256; paper 512)")
    p.add_argument("--chamfer-samples", type=_positive_int, default=300_000, help="samples per surface (default 300k)")
    p.add_argument("--iou-resolution", type=_positive_int, default=128, help="occupancy grid of the IoU (default 128)")
    p.add_argument("--surface-samples", type=_positive_int, default=500_000,
                   help="dense surface samples defining the ground truth (default 500k)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation and of the sampling (default 0)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    _add_fused(p)
    _add_common(p)
    p.set_defaults(run=commands.fit_sdf)


def _add_eval(sub) -> None:
    """`finer eval image|sdf`."""
    p = sub.add_parser("eval", help="evaluate a saved model")
    eval_sub = p.add_subparsers(dest="task", required=True, metavar="TASK")
    p = eval_sub.add_parser("image", help="PSNR, SSIM and LPIPS of image A against reference B, as JSON")
    p.add_argument("a", help="the image to score (e.g. a reconstruction)")
    p.add_argument("b", help="the reference image (same size)")
    p.add_argument("--alpha", choices=["white", "black", "drop"], default="white",
                   help="how an alpha channel is composited before comparing (default white)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--quiet", action="store_true", help="accepted as by every command (it prints only its JSON)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=commands.eval_image)

    p = eval_sub.add_parser("sdf", help="Chamfer distance and IoU of an SDF checkpoint against a mesh")
    p.add_argument("checkpoint", help="checkpoint.pt or the run folder")
    p.add_argument("--mesh", help="the ground-truth mesh (default: the one the run fitted)")
    p.add_argument("--resolution", type=_positive_int, help="marching-cubes grid (default: the run's)")
    p.add_argument("--chamfer-samples", type=_positive_int, help="samples per surface (default: the run's)")
    p.add_argument("--iou-resolution", type=_positive_int, help="occupancy grid of the IoU (default: the run's)")
    p.add_argument("--surface-samples", type=_positive_int,
                   help="dense surface samples defining the ground truth (default: the run's)")
    p.add_argument("--out", help="folder for eval.json, mesh.ply and render.png (default: the run's eval/)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in that folder")
    _add_common(p)
    p.set_defaults(run=commands.eval_sdf)


def _add_resume(sub) -> None:
    """`finer resume`."""
    p = sub.add_parser("resume", help="continue an interrupted run from its checkpoint")
    p.add_argument("run_dir", help="the run folder")
    p.add_argument("--steps", type=_positive_int,
                   help="new total number of steps (default: as planned; the learning-rate decay then follows the "
                        "new total, so it rises again where the run continues)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to compute (default: as the run chose)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=commands.resume)


def _add_render(sub) -> None:
    """`finer render [nerf]`."""
    p = sub.add_parser("render", help="render a model from its checkpoint: an image at any resolution "
                                      "(finer render CKPT) or a NeRF turntable (finer render nerf CKPT)",
                       usage="finer render [nerf] CHECKPOINT [options]")
    p.add_argument("target", nargs="+", metavar="[nerf] CHECKPOINT", help="checkpoint.pt or the run folder")
    p.add_argument("--scale", type=_positive_float, default=None,
                   help="times the training resolution (default: 2 for images, 1 for NeRF)")
    p.add_argument("--path", choices=["orbit"], help="NeRF camera path (default orbit)")
    p.add_argument("--frames", type=_positive_int, help="NeRF turntable frames (default 60)")
    p.add_argument("--elevation", type=float, help="NeRF orbit elevation in degrees (default 30)")
    p.add_argument("--out", help="output PNG (image; default: render_xSCALE.png beside the checkpoint) or folder "
                                 "(NeRF; default: turntable/ beside the checkpoint)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (a NeRF --out folder's turntables); the default place "
                        "is replaced without it")
    _add_common(p)
    p.set_defaults(run=commands.render)


def _add_analyze(sub) -> None:
    """`finer analyze ntk|activations|neurons`."""
    p = sub.add_parser("analyze", help="NTK, activation statistics, learned neurons")
    an_sub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    p = an_sub.add_parser("ntk", help="empirical NTK of the supplement's shallow networks vs the bias range k")
    p.add_argument("--models", default="siren,finer", help="comma-separated registry names (default siren,finer)")
    p.add_argument("--k", default="1,5,10,20", help="first-layer bias ranges for the FINER family (default 1,5,10,20)")
    p.add_argument("--width", type=_positive_int, default=256, help="hidden units (default 256, the supplement's)")
    p.add_argument("--points", type=_positive_int, default=1024, help="points of the 1-D grid (default 1024)")
    p.add_argument("--params", choices=["all", "first"], default="all",
                   help="parameters the kernel is taken over (default all)")
    p.add_argument("--threshold", type=_positive_float, default=1.0, help="count eigenvalues above this (default 1)")
    p.add_argument("--steps", type=_positive_int, default=1000, help="steps of the 1-D fit (default 1000)")
    p.add_argument("--mc-samples", type=_positive_int, default=200_000,
                   help="Monte-Carlo samples for Eq. (5) (default 200000)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="results folder (it may hold other files)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier NTK analysis in --out")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (the results are in --out)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=commands.analyze_ntk)
    p = an_sub.add_parser("activations", help="supplement Fig. 5: activation statistics at initialisation")
    p.add_argument("--k", default="default,1,5,10,20",
                   help="first-layer bias ranges ('default' = PyTorch's; default default,1,5,10,20)")
    p.add_argument("--layers", type=_positive_int, default=2, help="layers whose statistics are shown (default 2)")
    p.add_argument("--width", type=_positive_int, help="hidden units (default 256, the image FINER's)")
    p.add_argument("--hidden-layers", type=_non_negative_int, help="hidden layers (default 3, the image FINER's)")
    p.add_argument("--resolution", type=_positive_int, default=128,
                   help="side of the coordinate grid fed to the network (default 128)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation (default 0)")
    p.add_argument("--out", required=True, help="results folder (it may hold other files)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier activation analysis in --out")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (the results are in --out)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=commands.analyze_activations)
    p = an_sub.add_parser("neurons", help="first-layer neurons of a trained image model")
    p.add_argument("checkpoint", help="checkpoint.pt or the run folder")
    p.add_argument("--count", type=_positive_int, default=64, help="neurons in the picture (default 64)")
    p.add_argument("--out", help="folder (default: CHECKPOINT_DIR/neurons)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier neuron analysis in that folder")
    p.add_argument("--quiet", action="store_true", help="accepted as by every command (it prints only its JSON)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=commands.analyze_neurons)


def _add_bench_grid(bench_sub) -> None:
    """`finer bench images` and `finer bench width`."""
    for name, help_text in (("images", "fit a folder of images with several models; write a table"),
                            ("width", "supplement Fig. 2: PSNR against hidden width (two hidden layers)")):
        p = bench_sub.add_parser(name, help=help_text)
        sweep = name == "width"
        p.add_argument("directory", help="folder of images")
        p.add_argument("--models", default="finer,siren,gauss,wire,pemlp,official-finer",
                       help="comma-separated registry names; official-finer is the eager reference "
                            "(default finer,siren,gauss,wire,pemlp,official-finer)")
        p.add_argument("--preset", default="quick", choices=["quick", "paper"],
                       help=("quick: 256-px crops downscaled to 128, 1000 steps; paper: 512^2, 5000 steps (the "
                             "widths of --widths, two hidden layers)") if sweep else
                            "quick: 256-px crops downscaled to 128, 3x128, 1000 steps; paper: 512^2, 3x256, 5000")
        p.add_argument("--steps", type=_positive_int, help="override the preset's steps")
        # a width sweep sets both itself (--widths; two hidden layers): there they are refused, not listed
        # (and defined, so that --width is not taken as an abbreviation of --widths)
        p.add_argument("--hidden-layers", type=_non_negative_int,
                       help=argparse.SUPPRESS if sweep else "override the preset's hidden layers")
        p.add_argument("--width", type=_positive_int,
                       help=argparse.SUPPRESS if sweep else "override the preset's width")
        p.add_argument("--crop", help="override the preset's centre crop (N, HxW, or none)")
        p.add_argument("--size", type=_size_or_none, help="override the preset's resize (N, or none)")
        if name == "width":
            p.add_argument("--widths", default="32,64,128,256,512", help="hidden widths (default 32..512)")
        p.add_argument("--limit", type=_positive_int, help="only the first N images")
        p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
        p.add_argument("--out", required=True, help="results folder (finished runs are skipped on a rerun)")
        p.add_argument("--report-only", action="store_true",
                       help="train nothing: write the tables and report from the runs already finished in --out "
                            "(a grid stopped part way, or a subset of it run on its own)")
        p.add_argument("--executor", default="local", choices=["local", "ray"],
                       help="local: this machine (--workers processes); ray: one Ray task per run")
        p.add_argument("--workers", type=_positive_int, default=1,
                       help="local executor: parallel processes, each with its share of the cores (default 1)")
        p.add_argument("--address", help="ray executor: cluster address (e.g. auto, ray://head:10001); "
                                         "default: start a local Ray instance")
        p.add_argument("--batch-signals", type=_positive_int, default=1, metavar="K",
                       help="fit the runs of a method and seed on up to K same-sized images as one stacked "
                            "network (same results as one by one; pays on a GPU for small images: 11.65x for 16 "
                            "128^2 images on an H200, but slower there at 512^2 and on a small CPU, see "
                            "docs/results/README.md; methods with learnable activations and the reference run "
                            "alone; default 1)")
        p.add_argument("--checkpoint-every", type=_non_negative_int, default=250, metavar="N",
                       help="steps between writes of a run's state to OUT/runs/RECORD.partial.pt, from which a "
                            "rerun continues an interrupted run (default 250; 0: none; stacked runs start again)")
        _add_fused(p)
        _add_common(p)
        p.set_defaults(run=commands.bench_grid)


def _add_bench_compare(bench_sub) -> None:
    """`finer bench compare`."""
    p = bench_sub.add_parser("compare", help="per-image PSNR differences between methods of a finished grid")
    p.add_argument("results", help="a folder written by `finer bench images` or `finer bench width` "
                                   "(or its results.json / width.json; widths are compared width by width)")
    p.add_argument("pairs", nargs="*", metavar="A:B", help="method pairs: mean/min/max of A - B, images A wins")
    p.add_argument("--lead", metavar="A", help="A's margin over the best other method on each image")
    p.add_argument("--json", action="store_true", help="print JSON (one object per comparison)")
    p.add_argument("--quiet", action="store_true", help="accepted as by every command (it prints only its result)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=commands.bench_compare)


def _add_bench_speed(bench_sub) -> None:
    """`finer bench speed`."""
    p = bench_sub.add_parser("speed", help="training step time against the GEMM floor and the official code")
    p.add_argument("--size", type=_positive_int, default=256, help="image side (default 256; full batch)")
    p.add_argument("--width", type=_positive_int, default=256, help="hidden width (default 256)")
    p.add_argument("--hidden-layers", type=_non_negative_int, default=3, help="hidden-to-hidden layers (default 3)")
    p.add_argument("--steps", type=_positive_int, default=10, help="steps per timed block (default 10)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed blocks, median reported (default 3)")
    p.add_argument("--warmup", type=_non_negative_int, default=3, help="warm-up steps (default 3)")
    p.add_argument("--models", default=",".join(("finer", "siren", "gauss", "wire", "pemlp", "gauss-finer",
                                                  "wire-finer")),
                   help="comma-separated registry names (default finer,siren,gauss,wire,pemlp,gauss-finer,wire-finer)")
    p.add_argument("--no-compile", action="store_true", help="fused activations without torch.compile")
    p.add_argument("--identity-steps", type=_non_negative_int, default=100,
                   help="steps of the library-vs-reference identity check (0: skip; default 100)")
    p.add_argument("--image", help="image to fit (default: scikit-image's astronaut)")
    p.add_argument("--signals", type=_non_negative_int, default=16,
                   help="many-signals check: images fitted one by one and all at once (default 16; 0: skip)")
    p.add_argument("--signal-size", type=_positive_int, default=128, help="their side (default 128)")
    p.add_argument("--signal-width", type=_positive_int, default=128, help="their networks' width (default 128)")
    p.add_argument("--signal-steps", type=_positive_int, default=20, help="steps per image (default 20)")
    p.add_argument("--signals-dir", help="folder of the many-signals images (default: scikit-image tiles)")
    p.add_argument("--out", help="write the report here (Markdown, NAME.md) and its data beside it (NAME.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report at --out")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one block of every row (operators by their own time) into "
                        "OUT's .profile.txt beside the report (needs --out)")
    _add_cuda_graph(p, "the library's steps")
    _add_common(p)
    p.set_defaults(run=commands.bench_speed)


def _add_bench_sdf(bench_sub) -> None:
    """`finer bench sdf`."""
    p = bench_sub.add_parser("sdf", help="fit every mesh of a folder with several models; Chamfer/IoU table")
    p.add_argument("directory", help="folder of meshes")
    p.add_argument("--models", default="finer,siren,wire,gauss,pemlp",
                   help="comma-separated registry names (default finer,siren,wire,gauss,pemlp)")
    p.add_argument("--steps", type=_positive_int, help="override the quick protocol's 1000 steps")
    p.add_argument("--batch-size", type=_positive_int, help="override the points per step (5000)")
    p.add_argument("--pool-size", type=_positive_int, help="override the precomputed training points (500k)")
    p.add_argument("--surface-samples", type=_positive_int,
                   help="override the dense surface samples of the ground truth (500k)")
    p.add_argument("--resolution", type=_positive_int, help="override the marching-cubes grid (128)")
    p.add_argument("--iou-resolution", type=_positive_int, help="override the IoU's occupancy grid (128)")
    p.add_argument("--chamfer-samples", type=_positive_int, help="override the Chamfer samples (100k)")
    p.add_argument("--out", required=True, help="results folder (finished runs are skipped on a rerun)")
    _add_common(p)
    p.set_defaults(run=commands.bench_sdf)
