"""Stage 'e2e': a Transformer built from your code learns to write numbers in words.

The task, the data and the training loop are the project's (grader/tasks/ch2.py); only the model is
yours. It trains from scratch for about half a minute on a CPU, then greedy-decodes numbers it has
never seen."""

from __future__ import annotations

import torch

from grader import artifacts
from grader.tasks import ch2 as task
from grader.tree import load
from tests.helpers import check_at_least, check_below

transformer = load("ch2.transformer")

WHERE = "ch2/attention.py, ch2/block.py and ch2/transformer.py"


def test_translates_numbers_it_never_saw():
    """Trained from scratch, greedy decoding gets at least 90% of held-out numbers exactly right."""
    config = task.TrainConfig()
    torch.manual_seed(config.seed)
    train_numbers, test_numbers = task.split_numbers(config.n_train, config.n_test, config.seed)
    model = task.make_model(transformer.Transformer, config)
    losses = task.train(model, train_numbers, config)
    # What the grader shows after its table (a no-op outside the grader): the loss curve first,
    # so that a model that does not learn still shows how its loss went.
    artifacts.save("e2e", {"title": "Your Transformer, trained from scratch", "losses": losses})

    start, end = sum(losses[:20]) / 20, sum(losses[-50:]) / 50
    check_below(
        end,
        0.1,
        f"the training loss should fall below 0.1, but it went from {start:.2f} to {end:.2f} "
        f"(average of the last 50 of {config.steps} steps). Every earlier stage passes, so look "
        f"for what only training shows: gradients that do not flow (a .detach(), a tensor "
        f"rebuilt from numbers), dropout left on, or padding that is not masked, in {WHERE}.",
    )

    predictions = task.translate(model, test_numbers)
    expected = [task.number_to_words(n) for n in test_numbers]
    right = [p == e for p, e in zip(predictions, expected, strict=True)]
    accuracy = sum(right) / len(right)
    wrong = [
        f"{n} -> {p!r} (expected {e!r})"
        for n, p, e, ok in zip(test_numbers, predictions, expected, right, strict=True)
        if not ok
    ]
    artifacts.save(
        "e2e",
        {
            "title": f"Your Transformer on numbers it never saw: {accuracy:.0%} exactly right",
            "samples": [
                f"{n} -> {p}" + ("" if ok else f"   (expected: {e})")
                for n, p, e, ok in zip(
                    test_numbers[:5], predictions[:5], expected[:5], right[:5], strict=True
                )
            ],
            "losses": losses,
        },
    )
    check_at_least(
        accuracy,
        0.9,
        f"greedy_decode should translate at least 90% of {len(test_numbers)} unseen numbers "
        f"exactly, got {accuracy:.0%} with a final training loss of {end:.3f}; for example "
        f"{'; '.join(wrong[:3])}. The loss is low, so look at greedy_decode in "
        f"ch2/transformer.py (and at dropout, which must be off in eval mode).",
    )
