"""Training speed and quality side by side with nanoGPT, on its CPU shakespeare_char run.

    python benchmarks/bench_vs_nanogpt.py --nanogpt PATH/TO/nanoGPT --data PATH/TO/input.txt
        [--speed-iters 300] [--full-iters 2000] [--threads default,1] [--compile] [--bias]

``--nanogpt`` is a checkout of github.com/karpathy/nanoGPT (its own ``train.py`` and ``model.py``
run, unchanged, in a subprocess; nothing of it is copied here). ``--data`` is tinyshakespeare
(``data/tinyshakespeare/input.txt`` of github.com/karpathy/char-rnn). The configuration is the
one nanoGPT's README gives for a CPU: batch 12, block 64, 4 layers, 4 heads, 128 wide, dropout 0,
lr 1e-3 -> 1e-4 cosine over 2,000 iterations, warm-up 100, betas (0.9, 0.99), weight decay 0.1,
clipping 1.0, seed 1337, a character-level vocabulary, the first 90% of the text for training, no
biases (nanoGPT's ``bias=False``; ``--bias`` gives ours GPT-2's). One difference stays: ours is
GPT-2, whose tanh-approximated GELU costs torch's CPU kernel more than nanoGPT's exact one.

Two measurements, each run in a fresh process, peer and ours interleaved in one invocation so
that the machine's load hits both alike:

1. speed: nanoGPT / ours / nanoGPT for ``--speed-iters`` iterations, for each thread setting of
   ``--threads`` ("default" is each side's own default: torch's for nanoGPT, the command line's
   ``--threads`` default for ours). ms/iteration is the median over iterations (evaluation
   iterations and the first 5 left out), tokens/s = 12 * 64 / that.
2. quality: both for ``--full-iters`` iterations, at the first thread setting; nanoGPT's validation
   loss is its own ``estimate_loss`` at the last iteration over 200 random batches (its
   ``train.py`` default; the README's CPU command says 20, too noisy to compare: 200 batches are
   153,600 predictions, about the whole validation split), ours is the mean loss over every
   non-overlapping window of the validation text.

The ratio (ours / nanoGPT, tokens/s) is printed last. ``uptime`` is printed with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH, BLOCK = 12, 64
NANOGPT_ARGS = [
    "--device=cpu",
    "--compile=False",
    "--log_interval=1",
    f"--block_size={BLOCK}",
    f"--batch_size={BATCH}",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
    "--always_save_checkpoint=False",
]  # fmt: skip  (nanoGPT's README, "I only have a macbook": the CPU run)
EVAL_INTERVAL = 250  # nanoGPT's config/train_shakespeare_char.py


def uptime() -> str:
    """The load averages over 1, 5 and 15 minutes (how busy the machine was)."""
    loadavg = Path("/proc/loadavg")
    return " ".join(loadavg.read_text().split()[:3]) if loadavg.exists() else "n/a"


def thread_env(threads: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    return env


# ------------------------------------------------------------------------------------ nanoGPT


def prepare_nanogpt(peer: Path, data: Path, work: Path) -> None:
    """nanoGPT's own data/shakespeare_char/prepare.py, run on a copy next to ``data``."""
    folder = work / "data" / "shakespeare_char"
    folder.mkdir(parents=True)
    shutil.copy(peer / "data" / "shakespeare_char" / "prepare.py", folder)
    shutil.copy(data, folder / "input.txt")  # present, so prepare.py downloads nothing
    shutil.copy(peer / "configurator.py", work)  # train.py reads it from the working folder
    subprocess.run([sys.executable, "prepare.py"], cwd=folder, check=True, capture_output=True)


def run_nanogpt(
    peer: Path, work: Path, iters: int, threads: str, eval_iters: int = 20
) -> dict[str, float]:
    cmd = [sys.executable, str(peer / "train.py"), str(peer / "config/train_shakespeare_char.py")]
    cmd += [*NANOGPT_ARGS, f"--eval_iters={eval_iters}"]
    cmd += [f"--max_iters={iters}", f"--out_dir={work / 'out'}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=work, env=thread_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"nanoGPT failed:\n{out.stderr[-2000:]}")
    times = {
        int(m[1]): float(m[2])
        for m in re.finditer(r"iter (\d+): loss \S+, time ([\d.]+)ms", out.stdout)
    }
    vals = re.findall(r"step (\d+): train loss \S+, val loss ([\d.]+)", out.stdout)
    steady = [t for i, t in times.items() if i >= 5 and i % EVAL_INTERVAL != 0]
    return {
        "ms": statistics.median(steady),
        "wall_s": wall,
        "val_loss": float(vals[-1][1]) if vals and int(vals[-1][0]) == iters else float("nan"),
    }


# ---------------------------------------------------------------------------------------- ours


def run_ours(data: Path, iters: int, threads: str, compile: bool, bias: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--data", str(data), "--full-iters", str(iters)]
    if threads != "default":
        cmd += ["--threads", threads]
    cmd += ["--compile"] * compile + ["--bias"] * bias
    env = {**thread_env("default"), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ours failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def matmul_peak(n: int = 1024, repeat: int = 20) -> float:
    """This process's fp32 matmul rate in GFLOP/s (best of ``repeat`` n x n products)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def worker(data: Path, iters: int, threads: int | None, compile: bool, bias: bool) -> None:
    """One run of ours, in this process: nanoGPT's settings through the solutions' API."""
    import torch

    from solutions.ch3.cli import default_threads
    from solutions.ch3.data import create_dataloaders
    from solutions.ch3.gpt import GPT, GPTConfig
    from solutions.ch3.tokenizer import SimpleTokenizer
    from solutions.ch3.trainer import GPTTrainer, TrainConfig

    torch.set_num_threads(threads or default_threads())
    text = data.read_text(encoding="utf-8")
    tokenizer = SimpleTokenizer(text)  # sorted characters, as nanoGPT's prepare.py
    train, val = create_dataloaders(text, tokenizer, BLOCK, BATCH, train_split=0.9, seed=1337)
    torch.manual_seed(1337)
    shape = {"n_layer": 4, "n_head": 4, "n_embd": 128, "bias": bias}
    model = GPT(GPTConfig(tokenizer.vocab_size, BLOCK, **shape))
    config = TrainConfig(
        learning_rate=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000, betas=(0.9, 0.99),
        weight_decay=0.1, grad_clip=1.0, eval_interval=0, eval_batches=10**9, device="cpu",
        seed=1337, compile=compile,
    )  # fmt: skip
    trainer = GPTTrainer(model, train, val, config=config)
    torch.manual_seed(1337)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        trainer.train_step()
        times.append(1000 * (time.perf_counter() - start))
    steady = [t for i, t in enumerate(times) if i >= 5 and i % EVAL_INTERVAL != 0]
    result = {"ms": statistics.median(steady), "first_step_ms": times[0]}
    # Model FLOPs per iteration, as nanoGPT's estimate_mfu counts them: 6 per parameter per token
    # (forward 2, backward 4; the position table left out) plus attention's 12 * L * H * hs * T.
    n = model.num_parameters(non_embedding=True)
    flops = (6 * n + 12 * 4 * 4 * 32 * BLOCK) * BATCH * BLOCK
    result["gflops"] = flops / result["ms"] / 1e6
    result["peak_gflops"] = matmul_peak()
    if iters >= 2000:
        result["val_loss"] = trainer.evaluate()
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--data", type=Path, required=True, help="tinyshakespeare input.txt")
    parser.add_argument("--speed-iters", type=int, default=300)
    parser.add_argument("--full-iters", type=int, default=2000, help="0: skip the quality run")
    parser.add_argument("--threads", default="1,default", help="comma-separated settings")
    parser.add_argument("--compile", action="store_true", help="ours with torch.compile")
    parser.add_argument("--bias", action="store_true", help="ours with GPT-2's biases")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        threads = int(args.threads) if args.threads.isdigit() else None
        worker(args.data, args.full_iters, threads, args.compile, args.bias)
        return 0
    if args.nanogpt is None or not (args.nanogpt / "train.py").is_file():
        parser.error("--nanogpt must be a checkout of karpathy/nanoGPT (with train.py)")
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")

    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_nanogpt(args.nanogpt, args.data, work)
        for threads in args.threads.split(","):
            peer1 = run_nanogpt(args.nanogpt, work, args.speed_iters, threads)
            ours = run_ours(args.data, args.speed_iters, threads, args.compile, args.bias)
            peer2 = run_nanogpt(args.nanogpt, work, args.speed_iters, threads)
            peer_ms = (peer1["ms"] + peer2["ms"]) / 2
            ratio = peer_ms / ours["ms"]
            ratios.append((threads, ratio))
            print(
                f"speed, threads={threads}, {args.speed_iters} iterations, load {uptime()}: "
                f"nanoGPT {peer1['ms']:.1f} / ours {ours['ms']:.1f} / nanoGPT {peer2['ms']:.1f} "
                f"ms/iteration = {BATCH * BLOCK / peer_ms * 1000:,.0f} vs "
                f"{BATCH * BLOCK / ours['ms'] * 1000:,.0f} tokens/s: ours {ratio:.2f}x; ours "
                f"{ours['gflops']:.1f} GFLOP/s of a measured {ours['peak_gflops']:.1f} peak "
                f"(MFU {ours['gflops'] / ours['peak_gflops']:.0%}); ours' first step "
                f"{ours['first_step_ms'] / 1000:.1f} s" + (" (compiling)" if args.compile else ""),
                flush=True,
            )
        if args.full_iters:
            threads = args.threads.split(",")[0]
            peer = run_nanogpt(args.nanogpt, work, args.full_iters, threads, eval_iters=200)
            ours = run_ours(args.data, args.full_iters, threads, args.compile, args.bias)
            print(
                f"quality, {args.full_iters} iterations, threads={threads}, load {uptime()}: "
                f"validation loss nanoGPT {peer['val_loss']:.4f}, ours "
                f"{ours.get('val_loss', float('nan')):.4f}; ms/iteration nanoGPT "
                f"{peer['ms']:.1f}, ours {ours['ms']:.1f} ({peer['ms'] / ours['ms']:.2f}x); "
                f"wall nanoGPT {peer['wall_s']:.0f} s, ours {ours['wall_s']:.0f} s",
                flush=True,
            )
    print(
        "ratio (ours / nanoGPT tokens/s): " + ", ".join(f"threads={t}: {r:.2f}x" for t, r in ratios)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
