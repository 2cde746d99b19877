"""Stage ch3 'trainer': AdamW groups, the schedule reaching the optimizer, clipping, accumulation,
evaluation, and checkpoints that resume exactly."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from grader.tree import load
from tests.helpers import (
    Mistake,
    check,
    check_close,
    check_equal,
    check_matches,
    check_same,
    fail,
    fail_if_mistake,
)

trainer_mod = load("ch3.trainer")
GPTTrainer = trainer_mod.GPTTrainer

V, T = 13, 8


@dataclass
class TinyConfig:
    vocab_size: int = V
    block_size: int = T
    n_embd: int = 16


class TinyLM(nn.Module):
    """A small language model of the test's own, so this stage does not depend on ch3/gpt.py."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = TinyConfig()
        self.wte = nn.Embedding(V, 16)
        self.wpe = nn.Embedding(T, 16)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, V)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1), device=idx.device)
        h = self.wte(idx) + self.wpe(pos)
        h = h + self.drop(F.gelu(self.fc(self.ln(h))))
        logits = self.head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        return logits, loss


class EpochSampler(Sampler[int]):
    """A shuffled order fixed by the epoch, like ch3/data.py's WindowSampler (test's own copy)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 1000 * self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def sequences(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable data: each next token is (token * 3 + 1) mod V, from random starts."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, T + 1, dtype=torch.long)
    x[:, 0] = torch.randint(V, (n,), generator=g)
    for t in range(T):
        x[:, t + 1] = (x[:, t] * 3 + 1) % V
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def loader(batch_size: int, n: int = 48, shuffle: bool = False, seed: int = 0) -> DataLoader:
    ds = TensorDataset(*sequences(n, seed))
    if shuffle:
        return DataLoader(ds, batch_size=batch_size, sampler=EpochSampler(n, seed), drop_last=True)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=True)


def make(model=None, train=None, val=None, **kw):
    kw.setdefault("quiet", True)
    kw.setdefault("device", "cpu")
    model = TinyLM() if model is None else model
    return GPTTrainer(model, train if train is not None else loader(4), val, **kw)


def expected_lr(step, lr, warmup, max_steps, min_lr):
    """The contract of get_lr, written out."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step > max_steps:
        return min_lr
    r = (step - warmup) / (max_steps - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (lr - min_lr)


def test_adamw_decays_only_2d_parameters():
    """AdamW with weight decay on the 2-D parameters only, each parameter in exactly one group."""
    model = TinyLM()
    trainer = make(model, weight_decay=0.05)
    opt = trainer.optimizer
    where = "ch3/trainer.py, configure_optimizer"
    check(
        isinstance(opt, torch.optim.AdamW),
        f"the optimizer should be torch.optim.AdamW, got {type(opt).__name__}. Look at {where}.",
    )
    seen: dict[int, float] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            check(id(p) not in seen, f"a parameter appears in two groups. Look at {where}.")
            seen[id(p)] = group["weight_decay"]
    for name, p in model.named_parameters():
        check(id(p) in seen, f"parameter {name} is in no optimizer group. Look at {where}.")
        want = 0.05 if p.dim() >= 2 else 0.0
        check_matches(
            seen[id(p)],
            want,
            f"parameter {name} (shape {tuple(p.shape)}) should have weight_decay {want} "
            f"(decay 2-D weights only, never biases or LayerNorm), got {seen[id(p)]}. Look at "
            f"{where}.",
        )


def test_get_lr_is_linear_warmup_then_cosine_to_the_floor():
    """get_lr: linear warm-up to the peak, cosine down to min_lr at max_steps, min_lr after."""
    trainer = make(learning_rate=6e-4, min_lr=6e-5, warmup_steps=10, max_steps=100)
    for step in (0, 1, 5, 9, 10, 11, 30, 55, 99, 100, 150):
        want = expected_lr(step, 6e-4, 10, 100, 6e-5)
        got = trainer.get_lr(step)
        if step < 10 and not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
            from_zero = Mistake(
                "a warm-up that starts at 0 (learning_rate * step / warmup_steps)",
                "use (step + 1) / warmup_steps, so that step 0 already learns",
                pytest.approx(6e-4 * step / 10, rel=1e-9, abs=1e-12),
            )
            fail_if_mistake(
                got, [from_zero], f"get_lr({step})", "ch3/trainer.py, GPTTrainer.get_lr"
            )
        check(
            math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12),
            f"get_lr({step}) should be {want:.6g} (warm-up lr*(step+1)/warmup_steps for step < "
            f"10, then cosine from 6e-4 to 6e-5 at step 100), got {got:.6g}. Look at "
            f"ch3/trainer.py, GPTTrainer.get_lr.",
        )
    check_close(
        torch.tensor(make().config.min_lr),
        torch.tensor(make().config.learning_rate / 10),
        "the default min_lr",
        "ch3/trainer.py, GPTTrainer.__init__",
    )


def test_optimizer_uses_the_scheduled_lr_at_every_step():
    """The optimizer's lr equals get_lr(step) at every step (the book's warm-up never applied it)."""
    trainer = make(learning_rate=1e-2, warmup_steps=4, max_steps=12, grad_clip=None)
    never_set = Mistake(
        "learning_rate at every step: the schedule is never written into the optimizer",
        "set group['lr'] = self.get_lr(self.step) in every param_group before optimizer.step()",
        pytest.approx(1e-2, rel=1e-12),
    )
    for step in range(12):
        trainer.train_step()
        for group in trainer.optimizer.param_groups:
            got, want = group["lr"], trainer.get_lr(step)
            if not math.isclose(got, want, rel_tol=1e-12):
                fail_if_mistake(
                    got,
                    [never_set],
                    f"the optimizer's lr at step {step}",
                    "ch3/trainer.py, GPTTrainer.train_step",
                )
            check(
                math.isclose(got, want, rel_tol=1e-12),
                f"at step {step} the optimizer's lr is {got:.6g} but get_lr({step}) is "
                f"{want:.6g}: write the schedule into every param_group['lr'] before each "
                f"optimizer step. Look at ch3/trainer.py, GPTTrainer.train_step.",
            )
    check_equal(
        trainer.step,
        12,
        "trainer.step after 12 train_step() calls",
        "ch3/trainer.py, GPTTrainer.train_step",
    )


def oracle_run(model, batches, steps, *, lr, min_lr, warmup, max_steps, wd, clip):
    """``steps`` training steps written with torch.optim.AdamW and clip_grad_norm_, one batch
    each: the losses and the gradient norms before clipping."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    it = iter(batches)
    losses, norms = [], []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = expected_lr(step, lr, warmup, max_steps, min_lr)
        opt.zero_grad()
        x, y = next(it)
        loss = model(x, y)[1]
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        losses.append(loss.item())
    return losses, norms


def test_training_steps_match_adamw_with_clipping():
    """Five steps equal torch.optim.AdamW + clip_grad_norm_ with the same schedule (oracle)."""
    model = TinyLM()
    ref = copy.deepcopy(model)
    hp = dict(lr=3e-2, min_lr=1e-3, warmup=2, max_steps=5, wd=0.1, clip=0.05)
    trainer = make(
        model,
        loader(4),
        learning_rate=hp["lr"],
        min_lr=hp["min_lr"],
        warmup_steps=hp["warmup"],
        max_steps=hp["max_steps"],
        weight_decay=hp["wd"],
        grad_clip=hp["clip"],
    )
    records = [trainer.train_step() for _ in range(5)]
    losses, norms = oracle_run(ref, list(loader(4)), 5, **hp)
    where = "ch3/trainer.py, GPTTrainer.train_step"
    for step, (rec, loss, norm) in enumerate(zip(records, losses, norms, strict=True)):
        check(
            math.isclose(rec["loss"], loss, rel_tol=1e-5),
            f"the loss of step {step} should be {loss:.6f}, got {rec['loss']:.6f}. Look at {where}.",
        )
        check(
            math.isclose(rec["grad_norm"], norm, rel_tol=1e-4),
            f"grad_norm of step {step} should be the global norm before clipping, {norm:.6f}, "
            f"got {rec['grad_norm']:.6f}. Look at {where}.",
        )
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        check_close(
            p.detach(), q.detach(), f"parameter {name} after 5 steps", where, atol=1e-6, rtol=1e-5
        )


def test_gradient_is_clipped_to_the_global_norm():
    """After a step, .grad holds the gradient clipped like torch.nn.utils.clip_grad_norm_."""
    model = TinyLM()
    ref = copy.deepcopy(model)
    trainer = make(model, loader(8), grad_clip=0.1)
    record = trainer.train_step()
    x, y = next(iter(loader(8)))
    ref(x, y)[1].backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1)
    where = "ch3/trainer.py, GPTTrainer.train_step (clip the global norm before the step)"
    check(norm > 0.1, "internal: the test needs a gradient norm above the clip value")
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        check(
            p.grad is not None,
            f"{name}.grad is None after train_step: zero the gradients at "
            f"the start of the step, not the end. Look at {where}.",
        )
        check_close(p.grad, q.grad, f"the clipped gradient of {name}", where, atol=1e-7, rtol=1e-5)
    check_close(torch.tensor(record["grad_norm"]), norm, "grad_norm (before clipping)", where)


def test_accumulating_4_by_2_gives_the_gradient_of_one_batch_of_8():
    """grad_accum_steps=4 with batches of 2 gives the gradients and loss of one batch of 8."""
    model = TinyLM()
    ref = copy.deepcopy(model)
    small = make(model, loader(2), grad_accum_steps=4, grad_clip=None)
    big = make(ref, loader(8), grad_accum_steps=1, grad_clip=None)
    a, b = small.train_step(), big.train_step()
    where = (
        "ch3/trainer.py, GPTTrainer.train_step (divide each micro-batch loss by grad_accum_steps)"
    )
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        check_close(p.grad, q.grad, f"the accumulated gradient of {name}", where, atol=1e-6)
    check(
        math.isclose(a["loss"], b["loss"], rel_tol=1e-5),
        f"the step's loss should be the mean over its micro-batches, {b['loss']:.6f}, got "
        f"{a['loss']:.6f}. Look at {where}.",
    )


def test_evaluate_averages_a_fixed_set_of_validation_batches():
    """evaluate() is the mean loss of the first eval_batches validation batches, in eval mode."""
    model = TinyLM(dropout=0.5)
    val = loader(4, n=40, seed=1)
    trainer = make(model, val=val, eval_batches=3)
    model.train()
    got = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        want = sum(model(x, y)[1].item() for x, y in list(val)[:3]) / 3
    where = "ch3/trainer.py, GPTTrainer.evaluate"
    check(
        math.isclose(got, want, rel_tol=1e-5),
        f"evaluate() should be the mean loss over the first 3 validation batches in eval mode "
        f"(no dropout), {want:.6f}, got {got:.6f}. Look at {where}.",
    )
    model.train()
    again = trainer.evaluate()
    check_matches(
        again,
        got,
        f"two evaluations of the same model should be equal, got {got} and "
        f"{again}: use the same batches, in eval mode. Look at {where}.",
    )
    check(model.training, f"evaluate() should give the model back in train mode. Look at {where}.")


def test_train_learns_and_returns_the_history():
    """train() runs max_steps steps, evaluates, and returns the history; the loss goes down."""
    trainer = make(
        TinyLM(),
        loader(8, shuffle=True),
        loader(8, n=16, seed=1),
        learning_rate=2e-2,
        warmup_steps=5,
        max_steps=60,
        eval_interval=20,
    )
    history = trainer.train()
    where = "ch3/trainer.py, GPTTrainer.train"
    check(
        isinstance(history, dict) and len(history.get("train", [])) == 60,
        f"train() should return a history with 60 training records, got {history!r:.200}. "
        f"Look at {where}.",
    )
    check_equal([r["step"] for r in history["val"]], [20, 40, 60], "the steps evaluated", where)
    first, last = history["train"][0]["loss"], history["val"][-1]["loss"]
    check(
        last < 0.5 * first,
        f"the loss should fall on an easy task (first {first:.3f}, last "
        f"validation {last:.3f}). Look at ch3/trainer.py, GPTTrainer.train_step.",
    )


def test_progress_bar_runs(capsys):
    """Without quiet, train() prints its evaluations and still trains; a callback sees every
    step (the command line's progress bar is one)."""
    trainer = make(TinyLM(), loader(4), loader(4), max_steps=3, warmup_steps=1, quiet=False)
    seen = []
    history = trainer.train(callback=lambda t, record: seen.append((t.step, record["step"])))
    check_equal(
        len(history["train"]),
        3,
        "training records with a progress bar",
        "ch3/trainer.py, GPTTrainer.train",
    )
    check_equal(seen, [(1, 0), (2, 1), (3, 2)], "the callback's calls", "GPTTrainer.train")
    check("val loss" in capsys.readouterr().out, "train() without quiet prints its evaluations")


def test_checkpoint_holds_everything_and_loads_safely(tmp_path):
    """A checkpoint holds model, optimizer, step, config, tokenizer and RNG; weights_only loads it."""

    class Tok:
        def to_dict(self):
            return {"type": "test", "chars": "ab日本"}

    trainer = make(TinyLM(), loader(4), tokenizer=Tok())
    trainer.train_step()
    path = trainer.save_checkpoint(tmp_path / "run")
    where = "ch3/trainer.py, GPTTrainer.save_checkpoint"
    check(
        path is not None and path.is_file(),
        f"save_checkpoint(folder) should write "
        f"folder/checkpoint.pt and return its path, got {path!r}. Look at {where}.",
    )
    ckpt = torch.load(path, weights_only=True)
    for key in ("model", "optimizer", "step", "config", "tokenizer", "rng"):
        check(key in ckpt, f"the checkpoint lacks {key!r}. Look at {where}.")
    check_equal(ckpt["step"], 1, "the checkpoint's step", where)
    check_equal(
        ckpt["config"],
        {"vocab_size": V, "block_size": T, "n_embd": 16},
        "the checkpoint's config (the model's config dataclass as a dict)",
        where,
    )
    check_equal(
        json.loads(ckpt["tokenizer"]), Tok().to_dict(), "json.loads(checkpoint['tokenizer'])", where
    )
    leftovers = [p.name for p in path.parent.iterdir() if p.name != path.name]
    check(not leftovers, f"save_checkpoint left extra files {leftovers}. Look at {where}.")


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    """A save that crashes half-way leaves the previous checkpoint intact (temp file + os.replace)."""
    trainer = make(TinyLM(), loader(4))
    trainer.train_step()
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    good = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash)
    trainer.train_step()
    with pytest.raises(OSError):
        trainer.save_checkpoint(tmp_path / "ckpt.pt")
    check_matches(
        path.read_bytes(),
        good,
        "a save that failed half-way destroyed the previous "
        "checkpoint: write to a temporary file in the same folder, then os.replace it. Look at "
        "ch3/trainer.py, GPTTrainer.save_checkpoint.",
    )


def test_resumed_run_gives_exactly_the_same_losses(tmp_path):
    """Stopped at step 7 and resumed in a new trainer: the same losses as a run that never stopped."""
    kw = dict(learning_rate=1e-2, warmup_steps=3, max_steps=16, grad_accum_steps=2, seed=1)
    torch.manual_seed(0)
    full = make(TinyLM(dropout=0.2), loader(4, n=24, shuffle=True), **kw).train()["train"]

    torch.manual_seed(0)
    first = make(TinyLM(dropout=0.2), loader(4, n=24, shuffle=True), checkpoint_path=tmp_path, **kw)
    first.train(until=7)
    torch.manual_seed(12345)  # the resumed run must not depend on the RNG it starts with
    resumed = make(TinyLM(dropout=0.2), loader(4, n=24, shuffle=True), **kw)
    resumed.load_checkpoint(tmp_path)
    check_equal(
        resumed.step,
        7,
        "trainer.step after loading a checkpoint saved at step 7",
        "ch3/trainer.py, GPTTrainer.load_checkpoint",
    )
    rest = resumed.train()["train"]
    want = [r["loss"] for r in full[7:]]
    got = [r["loss"] for r in rest if r["step"] >= 7]
    if got != want:
        bad = next(
            i for i, (a, b) in enumerate(zip(got + [None] * 16, want, strict=False)) if a != b
        )
        fail(
            f"after resuming at step 7, the loss of step {7 + bad} is {got[bad] if bad < len(got) else 'missing'} "
            f"but the run that never stopped had {want[bad]}: a checkpoint must restore the "
            f"model, the optimizer, the step, the RNG state and the position in the data "
            f"(epoch and batch). Look at ch3/trainer.py, GPTTrainer.load_checkpoint and next_batch."
        )


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    """A missing checkpoint raises FileNotFoundError; a corrupt one a ValueError naming the file."""
    trainer = make()
    where = "ch3/trainer.py, GPTTrainer.load_checkpoint"
    try:
        trainer.load_checkpoint(tmp_path / "nothing.pt")
        fail(f"loading a missing checkpoint should raise FileNotFoundError. Look at {where}.")
    except FileNotFoundError:
        pass
    path = trainer.save_checkpoint(tmp_path / "ok.pt")
    for name, content in (("truncated.pt", path.read_bytes()[:500]), ("junk.pt", b"\x00" * 64)):
        bad = tmp_path / name
        bad.write_bytes(content)
        try:
            trainer.load_checkpoint(bad)
        except ValueError as e:
            check(
                name in str(e),
                f"the error for a corrupt checkpoint should name the file, "
                f"got {str(e)!r}. Look at {where}.",
            )
            continue
        except Exception as e:
            fail(
                f"a corrupt checkpoint ({name}) should raise a ValueError that names the file, "
                f"got {type(e).__name__}: {str(e)[:100]}. Look at {where}."
            )
        fail(f"loading a corrupt checkpoint ({name}) should raise ValueError. Look at {where}.")


def test_device_choice_and_cpu_precision():
    """pick_device prefers cuda, then mps, then cpu; on CPU there is no autocast by default."""
    want = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    got = trainer_mod.pick_device(None)
    check_equal(got.type, want, "pick_device(None).type", "ch3/trainer.py, pick_device")
    check_equal(
        trainer_mod.pick_device("cpu").type,
        "cpu",
        "pick_device('cpu').type",
        "ch3/trainer.py, pick_device",
    )
    check_equal(
        trainer_mod.pick_dtype(torch.device("cpu")),
        torch.float32,
        "the default precision on CPU",
        "ch3/trainer.py, pick_dtype",
    )


def test_settings_are_one_config_and_the_constructor_leaves_the_rng_alone():
    """The keyword arguments and a TrainConfig give the same trainer; keywords override the
    config; an unknown keyword is a TypeError; creating a trainer does not touch the global RNG."""
    config = trainer_mod.TrainConfig(learning_rate=2e-3, max_steps=50, warmup_steps=5)
    model, train = TinyLM(), loader(4)
    state = torch.get_rng_state()
    by_config = make(model, train, config=config)
    check_same(torch.get_rng_state(), state, "GPTTrainer(...) must not seed the RNG")
    by_keywords = make(learning_rate=2e-3, max_steps=50, warmup_steps=5)
    check_equal(by_config.config, by_keywords.config, "the config", "GPTTrainer.__init__")
    check_equal(by_config.config.min_lr, 2e-4, "the default min_lr", "GPTTrainer.__init__")
    check_equal(make(config=config, max_steps=9).config.max_steps, 9, "an override", "__init__")
    with pytest.raises(TypeError, match="max_step"):
        make(max_step=3)
