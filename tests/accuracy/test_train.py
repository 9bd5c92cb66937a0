"""evaluate and finetune on real digits with a small real CNN (CPU, a few seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cogent_compiler.accuracy import Dataset, evaluate, finetune, load_data
from cogent_compiler.errors import DataError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits16() -> Dataset:
    return load_data("digits", (1, 1, 16, 16), 10)


def small_cnn(outputs: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, outputs))


def test_finetune_recovers_accuracy(digits16: Dataset):
    model = small_cnn()
    before = evaluate(model, digits16.x_val, digits16.y_val)
    assert isinstance(before, float) and before < 0.3  # untrained: near chance (0.1)
    messages: list[str] = []
    result = finetune(model, digits16, steps=300, progress=messages.append)
    after = evaluate(model, digits16.x_val, digits16.y_val)
    assert after > 0.85, after
    assert result["steps"] == 300 and result["seconds"] > 0
    assert math.isfinite(result["final_loss"]) and result["final_loss"] < 1.0
    assert not model.training
    # about every 10 %: steps 30, 60, ... and a final report
    assert any(m.startswith("finetune step 30/300, loss ") for m in messages), messages
    assert messages[-1].startswith("finetune step 300/300, loss ")
    assert 10 <= len(messages) <= 40


def test_finetune_stops_on_time(digits16: Dataset):
    model = small_cnn()
    messages: list[str] = []
    result = finetune(model, digits16, steps=10**9, time_s=0.3, progress=messages.append)
    assert 1 <= result["steps"] < 10**9
    assert 0.3 <= result["seconds"] < 30  # stopped on time, not on steps (generous bound for a loaded CI box)
    assert messages and " of 0.3s" in messages[-1]
    assert not model.training


def test_finetune_time_only_budget(digits16: Dataset):
    result = finetune(small_cnn(), digits16, time_s=0.2)
    assert result["steps"] >= 1 and result["seconds"] >= 0.2


def test_finetune_is_repeatable_with_a_seed(digits16: Dataset):
    a, b = small_cnn(), small_cnn()
    ra = finetune(a, digits16, steps=15, seed=7)
    rb = finetune(b, digits16, steps=15, seed=7)
    assert ra["final_loss"] == rb["final_loss"]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_finetune_needs_a_budget(digits16: Dataset):
    with pytest.raises(ValueError, match="needs a budget"):
        finetune(small_cnn(), digits16)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        finetune(small_cnn(), digits16, steps=0)


def test_finetune_refuses_a_model_with_too_few_outputs(digits16: Dataset):
    model = small_cnn(outputs=5)
    with pytest.raises(DataError, match="the model has 5 outputs but the data set has 10 classes"):
        finetune(model, digits16, steps=3)
    assert not model.training


def test_finetune_feeds_uint8_as_given():
    data = load_data("digits", (1, 1, 16, 16), 10, input_dtype="uint8")
    seen: list[torch.dtype] = []

    class CastsItself(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.dtype)
            return self.net(x.float() / 255.0)

    model = CastsItself()
    result = finetune(model, data, steps=5)
    assert result["steps"] == 5 and set(seen) == {torch.uint8}
    assert 0.0 <= evaluate(model, data.x_val, data.y_val) <= 1.0


def test_evaluate_a_numpy_callable(digits16: Dataset):
    model = small_cnn()
    finetune(model, digits16, steps=20)

    def runner(batch: np.ndarray) -> np.ndarray:
        assert isinstance(batch, np.ndarray) and len(batch) <= 50
        return model(torch.from_numpy(batch)).detach().numpy()

    assert evaluate(runner, digits16.x_val, digits16.y_val, batch_size=50) == evaluate(
        model, digits16.x_val, digits16.y_val
    )

    def always_three(batch: np.ndarray) -> torch.Tensor:
        logits = torch.zeros(len(batch), 10)
        logits[:, 3] = 1.0
        return logits

    expected = float(np.mean(digits16.y_val == 3))
    assert evaluate(always_three, digits16.x_val, digits16.y_val) == pytest.approx(expected)


def test_evaluate_bad_inputs(digits16: Dataset):
    with pytest.raises(DataError, match="449 inputs but labels of shape \\(448,\\)"):
        evaluate(small_cnn(), digits16.x_val, digits16.y_val[:-1])
    with pytest.raises(DataError, match="no samples"):
        evaluate(small_cnn(), digits16.x_val[:0], digits16.y_val[:0])
    with pytest.raises(DataError, match="must return \\(batch, classes\\) logits"):
        evaluate(lambda b: np.zeros(len(b)), digits16.x_val, digits16.y_val)
