"""`visionlab sweep`: a tiny real sweep on SQLite (outputs, continuing a study), an exact grid, median pruning,
and two worker processes sharing one study on a real PostgreSQL server that the test starts itself."""
from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from visionlab.cli.sweep import cmd_sweep
from visionlab.config import load_config

from conftest import DATA

# tiny real runs: 300 embedded MNIST digits per split, no per-trial report, one thread each
TINY = ["data.name=mnist5k", "data.limit=300", "data.rotation=0", "train.progress=false", "train.tensorboard=false",
        "train.threads=1"]


def _space(tmp: Path, name: str, text: str) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\nreport: false\n{text}")
    return str(path)


def _rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def _sweep(tmp: Path, space: str, *extra: str) -> int:
    return cmd_sweep([str(_config(tmp)), space, *TINY, f"out_dir={tmp / 'runs'}", *extra])


def _config(tmp: Path) -> Path:
    path = tmp / "base.yaml"
    path.write_text("model: {name: mnist_cnn}\noptim: {name: adam, lr: 0.003}\ntrain: {batch_size: 50}\n")
    return path


def test_random_sweep_on_sqlite_writes_outputs_and_continues(tmp_path):
    space = _space(tmp_path, "tiny", "strategy: random\ntrials: 3\nseed: 0\nprune: false\nparams:\n"
                   "  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                   "  train.batch_size: {values: [32, 64]}\n  data.val_fraction: {type: float, low: 0.1, high: 0.3}\n")
    assert _sweep(tmp_path, space, "train.epochs=2") == 0
    sweep_dir = tmp_path / "runs" / "tiny"
    rows = _rows(sweep_dir)
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert all((sweep_dir / f"trial-{k}" / "summary.json").is_file() for k in range(3))
    assert (sweep_dir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (sweep_dir / "sweep.db").is_file()
    best = load_config(sweep_dir / "best.yaml")          # a full config that `visionlab train best.yaml` runs
    top = max(rows, key=lambda r: float(r["value"]))
    assert best.optim.lr == pytest.approx(float(top["optim.lr"])) and best.train.epochs == 2
    assert best.train.batch_size == int(top["train.batch_size"]) and best.name == "tiny-best"
    # the same command with a larger budget continues the study (load_if_exists) instead of starting over
    assert _sweep(tmp_path, space, "train.epochs=2", "trials=4") == 0
    assert [r["number"] for r in _rows(sweep_dir)] == ["0", "1", "2", "3"]
    # the sweep report, and `visionlab report` renders it again
    md = (sweep_dir / "sweep.md").read_text()
    assert "COMPLETE 4" in md and "sweep.png" in md and "tiny-best" in md
    (sweep_dir / "sweep.html").unlink()
    from visionlab import api
    assert api.report(sweep_dir) == sweep_dir / "sweep.html" and "<table>" in (sweep_dir / "sweep.html").read_text()


@pytest.mark.slow
def test_grid_enumerates_exactly_the_grid(tmp_path):
    space = _space(tmp_path, "grid", "strategy: grid\nprune: false\nparams:\n"
                   "  optim.lr: {values: [0.003, 0.001]}\n  train.batch_size: {values: [50, 100]}\n")
    assert _sweep(tmp_path, space, "train.epochs=1", "trials=10") == 0    # a grid never runs past its size
    rows = _rows(tmp_path / "runs" / "grid")
    assert len(rows) == 4 and {r["state"] for r in rows} == {"COMPLETE"}
    got = sorted((float(r["optim.lr"]), int(r["train.batch_size"])) for r in rows)
    assert got == sorted((lr, bs) for lr in (0.003, 0.001) for bs in (50, 100))
    # search, then confirm: the budget is used up, so this only reruns the top 2 configs over seeds 0 and 1
    assert _sweep(tmp_path, space, "train.epochs=1", "confirm=2", "n=2") == 0
    confirm = json.loads((tmp_path / "runs" / "grid" / "confirm.json").read_text())
    first, second = confirm["configs"]
    assert [first["rank"], second["rank"]] == [1, 2] and len(_rows(tmp_path / "runs" / "grid")) == 4
    assert first["stats"]["test/acc"]["n"] == 2 and first["stats"]["test/acc"]["ci"] is not None
    assert second["vs_best"]["test/acc"]["matched_seeds"] == [0, 1] and first["vs_best"]["test/acc"] is None
    assert (tmp_path / "runs" / "grid" / "confirm" / "2" / "seed-1" / "summary.json").is_file()


def test_median_pruner_prunes_a_clearly_bad_trial(tmp_path):
    # seed 1 shuffles the grid so lr=0.003 runs first; lr=1e-7 hardly learns and is pruned after its first epoch
    # (lr=0 is refused by the config's range check)
    space = _space(tmp_path, "prune", "strategy: grid\nseed: 1\nprune: {n_startup_trials: 1, n_warmup_steps: 0}\n"
                   "params:\n  optim.lr: {values: [0.003, 1.0e-7]}\n")
    assert _sweep(tmp_path, space, "train.epochs=3") == 0
    rows = {float(r["optim.lr"]): r for r in _rows(tmp_path / "runs" / "prune")}
    assert rows[0.003]["number"] == "0", "the grid order changed (optuna version?): pick a seed: with lr=0.003 first"
    assert rows[0.003]["state"] == "COMPLETE" and rows[1e-7]["state"] == "PRUNED"
    metrics = Path(rows[1e-7]["run_dir"]) / "metrics.csv"
    assert len(metrics.read_text().strip().splitlines()) == 2         # header + epoch 1: stopped there


# ---------------------------------------------------------------- a real PostgreSQL server, two workers

def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; install them with "
                    "`apt-get install postgresql` (scripts/setup.sh --dev does it when run as root)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("the PostgreSQL driver is missing; `pip install -e .[dev]` (psycopg[binary])")
    return Path(found[-1]).parent


def _postgres(password: str | None = None):
    """Start a throwaway PostgreSQL on 127.0.0.1:<free port>; yield its URL (without the password); stop and delete
    it. With ``password``, TCP logins need it (scram-sha-256); without, any login is trusted."""
    bindir = _pg_bin()
    # postgres refuses to run as root: run its tools as the postgres OS user, in a folder it owns
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp = Path(tempfile.mkdtemp(prefix="vl-pg-"))
    if as_pg:
        shutil.chown(tmp, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp / "data"
    auth = ["-A", "trust"]
    if password:
        (tmp / "pw").write_text(password + "\n")
        if as_pg:
            shutil.chown(tmp / "pw", "postgres", "postgres")
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={tmp / 'pw'}"]

    def pg(tool: str, *args: str):
        out = subprocess.run([*as_pg, str(bindir / tool), *args], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PGPASSWORD": password or ""})
        assert out.returncode == 0, f"{tool} failed: {out.stdout}\n{out.stderr}"

    pg("initdb", "-D", str(data), "-U", "postgres", *auth, "--no-sync", "-E", "UTF8")
    pg("pg_ctl", "-D", str(data), "-l", str(tmp / "server.log"), "-w", "-t", "60", "start", "-o",
       f"-k {tmp} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "sweeps")
        yield f"postgresql://postgres@127.0.0.1:{port}/sweeps"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def postgres():
    yield from _postgres()


PG_PASSWORD = "Sup3r-s3cret-pw"


@pytest.fixture
def postgres_pw():
    yield from _postgres(PG_PASSWORD)


# `visionlab sweep ARGS` through cli.main (its error handling and exit codes)
SWEEP_MAIN = "import sys; from visionlab import cli; sys.exit(cli.main(['sweep', *sys.argv[1:]]))"


def _sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", SWEEP_MAIN, *args]


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path, postgres):
    space = _space(tmp_path, "shared", "strategy: random\ntrials: 6\nprune: false\nparams:\n"
                   "  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n")
    # 1,500 digits per trial: long enough (seconds) that both workers are up before the budget is gone
    args = [str(_config(tmp_path)), space, *TINY, "data.limit=1500", f"out_dir={tmp_path / 'runs'}", "train.epochs=2",
            f"storage={postgres}"]
    env = {**os.environ, "VISIONLAB_DATA": str(DATA)}
    workers = [subprocess.Popen(_sweep_cmd(*args, "worker=true"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env) for _ in range(2)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n\n".join(logs)
    # the lead command: the budget is used up, so it runs no trial and writes the report of the shared study
    lead = subprocess.run(_sweep_cmd(*args), capture_output=True, text=True, env=env, timeout=300)
    assert lead.returncode == 0, lead.stderr
    rows = _rows(tmp_path / "runs" / "shared")
    assert len(rows) == 6 and {r["state"] for r in rows} == {"COMPLETE"}, logs
    assert sorted(int(r["number"]) for r in rows) == list(range(6))
    pids = {str(w.pid) for w in workers}
    assert {r["worker"].rsplit(":", 1)[1] for r in rows} == pids, f"both workers should have run trials: {logs}"
    assert all((Path(r["run_dir"]) / "summary.json").is_file() for r in rows)
    import optuna
    study = optuna.load_study(study_name="shared", storage=postgres)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6


@pytest.mark.slow
def test_storage_password_is_masked_and_can_come_from_the_environment(tmp_path, postgres_pw):
    with_pw = postgres_pw.replace("postgres@", f"postgres:{PG_PASSWORD}@")
    space = _space(tmp_path, "secret", "strategy: grid\nprune: false\nparams:\n  optim.lr: {values: [0.003]}\n")
    args = [str(_config(tmp_path)), space, *TINY, "train.epochs=1", f"out_dir={tmp_path / 'runs'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "VISIONLAB_STORAGE")}
    env["VISIONLAB_DATA"] = str(DATA)

    def sweep(*extra: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(_sweep_cmd(*args, *extra), capture_output=True, text=True, env={**env, **more_env},
                              timeout=300)

    typed = sweep(f"storage={with_pw}")          # the password typed on the command line: used, never shown
    assert typed.returncode == 0, typed.stderr
    assert PG_PASSWORD not in typed.stdout + typed.stderr and "postgres:***@127.0.0.1" in typed.stderr
    sweep_dir = tmp_path / "runs" / "secret"
    argv = json.loads((sweep_dir / "trial-0" / "env.json").read_text())["argv"]
    assert f"storage={with_pw.replace(PG_PASSWORD, '***')}" in argv
    written = [p for p in sweep_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".html",
                                                                               ".csv", ".yaml")]
    assert sweep_dir / "sweep.md" in written
    assert not [p for p in written if PG_PASSWORD in p.read_text()]

    # the server really wants the password: none fails; PGPASSWORD or a whole VISIONLAB_STORAGE URL supply it
    refused = sweep(f"storage={postgres_pw}")
    assert refused.returncode == 1 and "cannot open the study database" in refused.stderr
    for extra, more_env in (([f"storage={postgres_pw}"], {"PGPASSWORD": PG_PASSWORD}),
                            ([], {"VISIONLAB_STORAGE": with_pw})):
        r = sweep(*extra, **more_env)
        assert r.returncode == 0, r.stderr
        assert PG_PASSWORD not in r.stdout + r.stderr and "1 in the study" in r.stderr    # the same study


def test_storage_from_visionlab_storage_variable(tmp_path, monkeypatch):
    db = tmp_path / "elsewhere.db"
    monkeypatch.setenv("VISIONLAB_STORAGE", f"sqlite:///{db}")
    space = _space(tmp_path, "envdb", "strategy: grid\nprune: false\nparams:\n  optim.lr: {values: [0.003]}\n")
    assert _sweep(tmp_path, space, "train.epochs=1") == 0
    assert db.is_file() and not (tmp_path / "runs" / "envdb" / "sweep.db").exists()
    import optuna
    assert len(optuna.load_study(study_name="envdb", storage=f"sqlite:///{db}").trials) == 1
