"""Similarity search: retrieval metrics by hand, cosine vs euclidean rankings, index round trip, and a tiny real run."""
from __future__ import annotations

import numpy as np
import pytest

from visionlab.search import EmbeddingIndex, is_normalized, map_at_k, recall_at_k
from visionlab.utils import ConfigError, UserError


def test_recall_and_map_known_answers():
    q = np.array([0, 1, 2])
    r = np.array([[1, 0, 0],      # hit at ranks 2, 3
                  [1, 2, 2],      # hit at rank 1
                  [0, 1, 0]])     # no hit
    assert recall_at_k(q, r, 1) == pytest.approx(1 / 3)
    assert recall_at_k(q, r, 2) == pytest.approx(2 / 3)
    assert recall_at_k(q, r, 3) == pytest.approx(2 / 3)
    # R from the top k only: q0 AP@3 = (1/2 + 2/3) / 2, q1 = 1, q2 = 0
    assert map_at_k(q, r, 3) == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 + 0) / 3)
    # R = 4 relevant items in the gallery per query: denominators min(3, 4) = 3
    assert map_at_k(q, r, 3, num_relevant=4) == pytest.approx(((1 / 2 + 2 / 3) / 3 + 1 / 3 + 0) / 3)
    # per-query R: q0 has 2 -> min(3, 2) = 2, q1 has 1, q2 has 5
    assert map_at_k(q, r, 3, num_relevant=[2, 1, 5]) == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 + 0) / 3)
    assert map_at_k(q, r, 1) == pytest.approx(1 / 3)      # only q1 hits at rank 1


def test_cosine_and_euclidean_rank_alike_only_when_normalised():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.normal(size=(20, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    assert is_normalized(x)
    ic, sc = EmbeddingIndex(x, "cosine").query(q, 10)
    ie, se = EmbeddingIndex(x, "euclidean").query(q, 10)
    np.testing.assert_array_equal(ic, ie)
    np.testing.assert_allclose(se ** 2, 2 - 2 * sc, atol=1e-4)      # ||a-b||^2 = 2 - 2 cos(a, b)
    assert np.all(np.diff(sc, axis=1) <= 1e-6) and np.all(np.diff(se, axis=1) >= -1e-6)
    # unnormalised: same direction as the query but far away vs. a nearby point at an angle
    g = np.array([[10.0, 0.0], [0.8, 0.6]], np.float32)
    assert not is_normalized(g)
    assert EmbeddingIndex(g, "cosine").query([[1.0, 0.0]], 1)[0][0, 0] == 0
    assert EmbeddingIndex(g, "euclidean").query([[1.0, 0.0]], 1)[0][0, 0] == 1


def test_index_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    index = EmbeddingIndex(x, "euclidean")
    path = index.save(tmp_path / "idx.npz", labels=np.arange(50), names=np.array([f"n{i}" for i in range(50)]))
    back, extra = EmbeddingIndex.load(path)
    assert back.metric == "euclidean"
    np.testing.assert_array_equal(back.embeddings, x)
    np.testing.assert_array_equal(extra["labels"], np.arange(50))
    assert str(extra["names"][3]) == "n3"
    for a, b in zip(index.query(x[:5], 4), back.query(x[:5], 4)):
        np.testing.assert_array_equal(a, b)
    assert back.query(x[:5], 1)[0][:, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        EmbeddingIndex(x, "manhattan")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from visionlab.run import train

    tmp = tmp_path_factory.mktemp("sim")
    res = train(None, ["train.epochs=1", "data.limit=300", "train.progress=false", f"out_dir={tmp}"])
    return res.run_dir


def test_retrieval_and_similar_on_a_real_run(tiny_run, tmp_path, capsys):
    from PIL import Image

    from visionlab.cli.similar import cmd_similar
    from visionlab.views.similarity import embed_split, evaluate_retrieval, similar

    res = evaluate_retrieval(tiny_run, k=(1, 5, 10))
    print("retrieval:", res)
    assert res["recall@1"] > 0.3 and res["queries"] > 0           # chance is about 0.1 for 10 classes
    assert 0 < res["map@10"] <= 1 and (tiny_run / "similarity" / "retrieval.json").is_file()
    assert (tiny_run / "similarity" / "index_train.npz").is_file()
    emb, labels, names = embed_split(tiny_run, "test", limit=7)
    assert emb.shape[0] == len(labels) == len(names) == 7 and emb.ndim == 2
    img = np.zeros((28, 28), np.uint8)
    img[6:22, 12:16] = 255                                          # a rough "1"
    Image.fromarray(img).save(tmp_path / "q.png")
    png = similar(tiny_run, tmp_path / "q.png", k=5, out=tmp_path)
    assert png == tmp_path / "q_similar.png" and png.stat().st_size > 1000
    assert cmd_similar([str(tiny_run), "eval", "k=5", "metric=euclidean"]) == 0
    assert "recall@5=" in capsys.readouterr().out
    assert cmd_similar([str(tiny_run), str(tmp_path / "q.png"), "k=3", f"out={tmp_path}"]) == 0
    assert "q_similar.png" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        cmd_similar([str(tiny_run), str(tmp_path / "q.png"), "colour=red"])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.png"):
        cmd_similar([str(tiny_run), str(tmp_path / "bad.png")])
    assert cmd_similar([str(tiny_run), str(tmp_path / "q.png"), "k=3"]) == 0       # default out: the run folder
    report = (tiny_run / "report.md").read_text()
    assert "## Similarity search" in report and "similarity/q_similar.png" in report and "recall@k" in report
