"""`python -m bridge train|eval|plot` and `--help`, run as a user runs them."""

import csv
import json
import subprocess
import sys

import pytest

from bridge.cli import main, parser

PY = [sys.executable, "-m", "bridge"]


def test_help_documents_every_option_of_every_command():
    top = parser()
    for name, sub in top._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"


def test_train_writes_metrics_config_checkpoints_and_curve_then_eval_and_plot_read_them(tmp_path):
    runs = tmp_path / "runs"
    out = subprocess.run(PY + ["train", "--steps", "1500", "--seed", "3", "--name", "short", "--runs-dir", str(runs),
                               "--eval-every", "500", "--eval-episodes", "3", "--set", "learning_starts=200",
                               "--set", "hidden_sizes=[32,32]"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run = runs / "short"
    assert f"results in {run}/" in out.stdout
    assert "steps/s" in out.stderr  # the live progress line
    for name in ("metrics.csv", "config.json", "best.ckpt", "final.ckpt", "summary.json", "learning_curve.png"):
        assert (run / name).stat().st_size > 0, name
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 3 and config["hidden_sizes"] == [32, 32] and config["learning_starts"] == 200
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["step"] for r in rows if r["eval_return"]] == ["500", "1000", "1500"]
    assert sum(float(r["episode_return"]) for r in rows if r["episode_return"]) > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1500 and summary["steps_per_second"] > 0
    # The loop never blocks, so its CPU time (all threads) is at least about its wall time.
    wall_us_per_step = 1e6 / summary["steps_per_second"]
    assert 0.5 * wall_us_per_step < summary["cpu_us_per_step"] < 1e6
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ev = subprocess.run(PY + ["eval", str(run / "final.ckpt"), "--episodes", "3", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["episodes"] == 3 and result["env_id"] == "CartPole-v1" and 8 <= result["mean"] <= 500

    png = tmp_path / "again.png"
    assert main(["plot", str(run / "metrics.csv"), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_options_are_refused_with_a_message(tmp_path, capsys):
    assert main(["train", "--steps", "10", "--set", "lr=fast", "--runs-dir", str(tmp_path)]) == 2
    assert "config lr must be a finite number, got 'fast'" in capsys.readouterr().err
    assert main(["train", "--steps", "10", "--set", "learning_rate=1", "--runs-dir", str(tmp_path)]) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--set", "no-equals-sign"])
    assert "--set expects KEY=VALUE" in capsys.readouterr().err
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bogus)]) == 2
    assert "is not a dqn_bridge checkpoint" in capsys.readouterr().err
    notcsv = tmp_path / "x.csv"
    notcsv.write_text("a,b\n1,2\n")
    assert main(["plot", str(notcsv)]) == 2
    assert "is not a metrics CSV: missing column(s) episode_return, eval_return, step" in capsys.readouterr().err


def test_bench_solve_writes_its_json_where_out_dir_says(tmp_path):
    """A short, unsolvable budget: the run reports seed 0 unsolved, exits 1 (targets
    missed) and still writes its record under --out-dir."""
    out = subprocess.run(PY + ["bench", "solve", "--seeds", "0", "--max-steps", "1000", "--final-episodes", "2",
                               "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    (path,) = tmp_path.glob("solve-*.json")
    result = json.loads(path.read_text())
    assert [r["seed"] for r in result["records"]] == [0] and result["max_steps"] == 1000
    assert result["all_targets_met"] is False
    assert f"wrote {path}" in out.stdout
