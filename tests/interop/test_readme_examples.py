"""README.md and examples/ as a new user meets them, on SmolLM2 after the demo.

* `scripts/demo.sh` (README's first command) runs (DEMO_CHUNKS=1 here, to save time) and
  leaves $QFORGE_CACHE/demo/smollm2-hf, which examples/ci-gate.toml reads.
* Every command line in README.md's ```sh / ```console blocks runs, in order, in a scratch
  directory, with the files it names taken from the cache (SmolLM2-135M-Instruct.Q4_1.gguf,
  hamlet.txt, ~/.cache/qforge); or it is listed in NOT_RUN with the reason. A new line that is
  neither fails the test.
* Every examples/*.toml runs as shipped: ci-gate.toml through `qforge pipeline` (exit 0, the
  report passed), the Llama 3.1 recipes (config-only inputs in examples/configs/) through
  `qforge plan` and `qforge pipeline --dry-run`.
"""

import json
import os
import shlex
import shutil
import subprocess

import pytest

from conftest import ROOT, cache_dir

# README lines that cannot run here, and why. Keys are the command as written.
NOT_RUN = {
    "scripts/test.sh": "the whole suite; this test is part of it",
    "cargo install --locked --path .": "installs into ~/.cargo/bin; the same binary is under test here",
    "qforge quantize ./Llama-3.1-405B ./405B-FP8 --scheme fp8-rowwise --layout fbgemm --policy meta-405b":
        "needs the Llama 3.1 405B weights",
    "qforge verify ./Llama-3.1-8B ./Llama-3.1-8B-FP8 --data hamlet.txt --max-ppl-drift 1% --report drift.json":
        "needs the Llama 3.1 8B weights and their FP8 quantization",
}


def readme_commands() -> list[str]:
    """Every command line of README.md's sh/console code blocks, `$ ` and comments removed."""
    cmds, lang = [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            lang = None if lang is not None else line[3:].strip()
            continue
        if lang in ("sh", "console") and line.strip():
            line = line.strip().removeprefix("$ ")
            cmds.append(shlex.join(shlex.split(line, comments=True)))
    return cmds


@pytest.fixture(scope="module")
def demo(qforge, smollm2_gguf, hamlet):
    env = dict(os.environ, QFORGE_BIN=str(qforge), DEMO_CHUNKS="1", QFORGE_CACHE=str(cache_dir()))
    r = subprocess.run([str(ROOT / "scripts/demo.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    work = cache_dir() / "demo"
    for q in ["smollm2-fp8", "smollm2-w4a16-g64", "smollm2.Q4_K_M.gguf"]:
        assert json.loads((work / f"{q}.verify.json").read_text())["chunks"] == 1
    assert "artifact" in r.stdout and "smollm2.Q4_K_M.gguf" in r.stdout  # the drift table
    return work


def test_readme_command_lines(qforge, demo, smollm2_gguf, hamlet, tmp_path):
    cmds = readme_commands()
    assert "scripts/demo.sh" in cmds and any(c.startswith("qforge verify") for c in cmds), cmds
    ran = []
    for cmd in cmds:
        if cmd in NOT_RUN:
            continue
        if cmd == "scripts/demo.sh":
            ran.append(cmd)  # the demo fixture ran it
            continue
        argv = shlex.split(cmd)
        assert argv[0] == "qforge", f"README command neither run nor in NOT_RUN: {cmd}"
        given = {"SmolLM2-135M-Instruct.Q4_1.gguf": str(smollm2_gguf), "hamlet.txt": str(hamlet)}
        args = [
            str(cache_dir() / a.removeprefix("~/.cache/qforge/")) if a.startswith("~/.cache/qforge/")
            else given.get(a, a)
            for a in argv[1:]
        ]
        r = subprocess.run([str(qforge), *args], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stderr[-3000:]}"
        if args == ["--version"]:
            assert r.stdout.startswith("qforge 0.1.0 (commit "), r.stdout
        ran.append(cmd)
    assert len(ran) + len(NOT_RUN) == len(cmds), (ran, cmds)
    # what the lines made, in the scratch directory
    for made in ["smollm2-hf", "smollm2-f16.gguf", "smollm2-fp8", "smollm2-w4a16", "smollm2.Q4_K_M.gguf"]:
        assert (tmp_path / made).exists(), made


def test_examples_run_as_shipped(qforge, demo, tmp_path):
    recipes = sorted(p.name for p in (ROOT / "examples").glob("*.toml"))
    assert recipes == ["405b-fp8.toml", "ci-gate.toml", "edge-8b.toml"], recipes
    # ci-gate: the whole pipeline on the demo's model; a verbatim copy, so its out-ci/ lands in
    # the scratch directory (its other paths come from $QFORGE_CACHE)
    gate = tmp_path / "ci-gate.toml"
    shutil.copyfile(ROOT / "examples/ci-gate.toml", gate)
    r = subprocess.run([str(qforge), "pipeline", str(gate), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "out-ci/report.json").read_text())
    assert report["passed"] is True, report
    # the Llama 3.1 recipes as shipped: plan and dry run from examples/configs/ alone
    for name in ["405b-fp8.toml", "edge-8b.toml"]:
        for args in (["plan"], ["pipeline", "--dry-run"]):
            r = subprocess.run(
                [str(qforge), args[0], str(ROOT / "examples" / name), *args[1:]], capture_output=True, text=True
            )
            assert r.returncode == 0, f"{args} {name}: {r.stderr}"
            assert "total: disk" in r.stdout, r.stdout
