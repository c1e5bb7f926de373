"""The README's main command, `python -m jobs.quickstart`: it runs configs/quickstart.yaml through jobs.pipeline (run in
full by .ci/run, step 1); the old smoke run stays available as `--smoke`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_the_pipeline_config(monkeypatch):
    import jobs.pipeline
    import jobs.quickstart

    seen = {}
    monkeypatch.setattr(jobs.pipeline, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    assert jobs.quickstart.main(["--set", "output_dir=/tmp/x"]) == 0
    assert seen["argv"] == ["--config", str(REPO / "configs" / "quickstart.yaml"), "--set", "output_dir=/tmp/x"]


def test_smoke_flag_keeps_the_old_smoke_run(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "jobs.quickstart", "--smoke", "--architectures", "bert_dot",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bert_dot" in proc.stdout and out.is_file()
    row = next(line for line in proc.stdout.splitlines() if line.startswith("bert_dot"))
    assert int(row.split()[-1].rstrip("%")) >= 75  # the pretrained bi-encoder ranks the relevant abstract first
