"""Classification metrics: hand-computed answers, agreement with sklearn, dtype and input-kind invariance."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support, top_k_accuracy_score

from visionlab.metrics import ClassificationMetrics, ece_from_bins, per_class_from_confusion

# 3 classes, 6 samples; probabilities chosen so no confidence sits on an ECE bin edge (4 bins).
PROBS = [
    [0.70, 0.20, 0.10],  # t=0 pred 0 conf .70 correct
    [0.55, 0.35, 0.10],  # t=1 pred 0 conf .55 wrong
    [0.15, 0.80, 0.05],  # t=1 pred 1 conf .80 correct
    [0.20, 0.35, 0.45],  # t=2 pred 2 conf .45 correct
    [0.60, 0.30, 0.10],  # t=2 pred 0 conf .60 wrong (and not in top-2)
    [0.25, 0.33, 0.42],  # t=2 pred 2 conf .42 correct
]
TARGETS = [0, 1, 1, 2, 2, 2]


def _hand_metrics(as_logprobs: bool) -> dict:
    p = torch.tensor(PROBS, dtype=torch.float64)
    x = p.log() if as_logprobs else p.log() + 3.0  # logits = log-probs + any constant
    m = ClassificationMetrics(num_classes=3, topk=2, ece_bins=4)
    m.update(x.float(), torch.tensor(TARGETS))
    return m.compute()


@pytest.mark.parametrize("as_logprobs", [True, False])
def test_known_answers(as_logprobs):
    r = _hand_metrics(as_logprobs)
    assert r["n"] == 6
    assert r["confusion"] == [[1, 0, 0], [1, 1, 0], [1, 0, 2]]
    assert r["acc"] == pytest.approx(4 / 6)
    assert r["top5"] == pytest.approx(5 / 6)  # k = min(2, 3) = 2
    precision = [1 / 3, 1.0, 1.0]
    recall = [1.0, 1 / 2, 2 / 3]
    f1 = [0.5, 2 / 3, 0.8]
    for i, pc in enumerate(r["per_class"]):
        assert pc["index"] == i
        assert pc["precision"] == pytest.approx(precision[i])
        assert pc["recall"] == pytest.approx(recall[i])
        assert pc["f1"] == pytest.approx(f1[i])
    assert [pc["support"] for pc in r["per_class"]] == [1, 2, 3]
    assert r["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    nll = -(math.log(0.7) + math.log(0.35) + math.log(0.8) + math.log(0.45) + math.log(0.1) + math.log(0.42)) / 6
    assert r["loss"] == pytest.approx(nll, rel=1e-5)
    # bins [.25,.5): {.45 ok, .42 ok}; [.5,.75): {.70 ok, .55 x, .60 x}; [.75,1]: {.80 ok}
    ece = (abs(0.87 - 2) + abs(1.85 - 1) + abs(0.80 - 1)) / 6
    assert r["ece"] == pytest.approx(ece, rel=1e-5)


def test_plain_python_types():
    r = _hand_metrics(True)
    for key in ("acc", "top5", "loss", "ece", "macro_f1"):
        assert type(r[key]) is float
    assert type(r["n"]) is int
    assert all(type(v) is int for row in r["confusion"] for v in row)
    assert all(type(pc["support"]) is int and type(pc["f1"]) is float for pc in r["per_class"])


def _random_batches(seed=0, c=7, sizes=(50, 1, 33, 120)):
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(n, c, generator=g) * 2, torch.randint(0, c, (n,), generator=g)) for n in sizes]
    return c, batches


def test_agrees_with_sklearn_incrementally():
    c, batches = _random_batches()
    inc = ClassificationMetrics(c)
    for x, y in batches:
        inc.update(x, y)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    one = ClassificationMetrics(c)
    one.update(x, y)
    r, r1 = inc.compute(), one.compute()
    for key in ("acc", "top5", "loss", "ece", "macro_f1"):
        assert r[key] == pytest.approx(r1[key], rel=1e-6)
    assert r["confusion"] == r1["confusion"] and r["per_class"] == r1["per_class"]

    probs = x.double().softmax(1).numpy()
    pred = probs.argmax(1)
    yt = y.numpy()
    labels = list(range(c))
    assert r["acc"] == pytest.approx(accuracy_score(yt, pred))
    assert r["top5"] == pytest.approx(top_k_accuracy_score(yt, probs, k=5, labels=labels))
    assert r["loss"] == pytest.approx(log_loss(yt, probs, labels=labels), rel=1e-5)
    p, rc, f, s = precision_recall_fscore_support(yt, pred, labels=labels, zero_division=0)
    np.testing.assert_allclose([d["precision"] for d in r["per_class"]], p)
    np.testing.assert_allclose([d["recall"] for d in r["per_class"]], rc)
    np.testing.assert_allclose([d["f1"] for d in r["per_class"]], f)
    assert [d["support"] for d in r["per_class"]] == s.tolist()
    assert r["macro_f1"] == pytest.approx(float(np.mean(f)))
    assert r["n"] == len(yt)


def test_never_predicted_class_matches_sklearn_zero_division():
    # class 3 is present but never predicted; class 2 is neither present nor predicted
    x = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [5.0, 0, 0, 0], [0, 5.0, 0, 0]])
    y = torch.tensor([0, 1, 3, 3])
    m = ClassificationMetrics(4)
    m.update(x, y)
    r = m.compute()
    p, rc, f, _ = precision_recall_fscore_support(y.numpy(), x.argmax(1).numpy(), labels=[0, 1, 2, 3], zero_division=0)
    np.testing.assert_allclose([d["precision"] for d in r["per_class"]], p)
    np.testing.assert_allclose([d["recall"] for d in r["per_class"]], rc)
    np.testing.assert_allclose([d["f1"] for d in r["per_class"]], f)
    assert r["top5"] == 1.0  # k = min(5, 4) = 4 covers every class


def test_bf16_input_matches_float32_of_same_values():
    c, batches = _random_batches(seed=1)
    a, b = ClassificationMetrics(c), ClassificationMetrics(c)
    for x, y in batches:
        xb = x.bfloat16()
        a.update(xb, y)
        b.update(xb.float(), y)
    ra, rb = a.compute(), b.compute()
    assert ra == rb
    assert ra["n"] == sum(len(y) for _, y in batches)


def test_logprobs_give_same_metrics_as_logits():
    c, batches = _random_batches(seed=2)
    a, b = ClassificationMetrics(c), ClassificationMetrics(c)
    for x, y in batches:
        a.update(x, y)
        b.update(torch.log_softmax(x, dim=1), y)
    ra, rb = a.compute(), b.compute()
    assert ra["confusion"] == rb["confusion"]
    for key in ("acc", "top5", "loss", "ece", "macro_f1"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-7)


def test_reset_and_empty():
    m = ClassificationMetrics(3)
    r = m.compute()
    assert r["n"] == 0 and r["acc"] == 0.0 and r["confusion"] == [[0] * 3] * 3
    m.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    m.reset()
    assert m.compute()["n"] == 0


def test_bad_shapes_raise():
    m = ClassificationMetrics(3)
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        m.update(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="lie in"):
        m.update(torch.randn(2, 3), torch.tensor([0, 3]))


def test_helpers():
    pcs = per_class_from_confusion([[2, 0], [1, 1]])
    assert pcs[0]["precision"] == pytest.approx(2 / 3) and pcs[1]["recall"] == 0.5
    assert ece_from_bins([0, 0], [0, 0], [0, 0]) == 0.0
    assert ece_from_bins([2, 2], [1.8, 1.2], [2, 1]) == pytest.approx((0.2 + 0.2) / 4)
