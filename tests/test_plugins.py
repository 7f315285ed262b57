"""Plugins (issue 25): ``mpiopt run --plugin MODULE_OR_FILE`` and the ``mpiopt.plugins`` entry points
register compressors before the options are built; the README's GatherCompressor example runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_compressor.py"

PLUGIN = '''
from mpiopt.compressors import Option, register
from mpiopt.compressors.none import NoCompression


@register
class Echo(NoCompression):
    name = "echo-{tag}"
    options = (*NoCompression.options, Option("echo_level_{tag}", 1, int, "how loud"),)
'''


def mpiopt(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpiopt", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def compressor_choices(help_text: str):
    return re.search(r"--compressor \{([^}]*)\}", help_text).group(1).split(",")


def test_without_the_plugin_its_compressor_is_an_invalid_choice():
    res = mpiopt("run", "--data", "x", "--method", "sgd", "--compressor", "random-drop", "--out", "y.json")
    assert res.returncode == 2 and "invalid choice: 'random-drop'" in res.stderr, res.stderr


def test_a_plugin_file_adds_its_compressor_choice_and_flags_to_help():
    res = mpiopt("run", "--plugin", EXAMPLE, "--help")
    assert res.returncode == 0, res.stderr
    assert "random-drop" in compressor_choices(res.stdout)
    assert re.search(r"--keep KEEP\s+probability of keeping a coordinate \(default 0.6\)\s+\[random-drop\]",
                     res.stdout), res.stdout


def test_plugins_load_by_module_name_and_repeat(tmp_path):
    for tag in ("a", "b"):
        (tmp_path / f"plug_{tag}.py").write_text(PLUGIN.format(tag=tag))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = mpiopt("run", "--plugin", "plug_a", "--plugin=plug_b", "--help", env=env)
    assert res.returncode == 0, res.stderr
    assert {"echo-a", "echo-b"} <= set(compressor_choices(res.stdout))
    assert "--echo-level-a" in res.stdout and "--echo-level-b" in res.stdout


def test_an_installed_entry_point_loads_by_itself(tmp_path):
    """A distribution on the path whose metadata declares an ``mpiopt.plugins`` entry point."""
    (tmp_path / "plug_ep.py").write_text(PLUGIN.format(tag="ep"))
    info = tmp_path / "mpiopt_plug_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mpiopt-plug-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mpiopt.plugins]\necho = plug_ep\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = mpiopt("run", "--help", env=env)
    assert res.returncode == 0, res.stderr
    assert "echo-ep" in compressor_choices(res.stdout) and "--echo-level-ep" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--plugin", "no/such/file.py"], "mpiopt: error: --plugin 'no/such/file.py': no such file"),
    (["--plugin", "no_such_module_xyz"], "mpiopt: error: --plugin 'no_such_module_xyz': no module named "
                                         "'no_such_module_xyz' (give an importable module name or the path to a "
                                         ".py file)"),
    (["--plug", str(EXAMPLE)], "mpiopt: error: spell --plugin in full: it is read before the other options are "
                               "built"),
])
def test_plugin_mistakes_are_one_line(args, message):
    res = mpiopt("run", *args, "--data", "x", "--method", "sgd", "--out", "y.json")
    assert res.returncode == 2 and res.stderr.splitlines()[0].startswith(message), res.stderr


def test_a_plugin_that_fails_to_import_is_named(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ZeroDivisionError('plugin bug')\n")
    res = mpiopt("run", "--plugin", broken, "--data", "x", "--method", "sgd", "--out", "y.json")
    assert res.returncode == 2
    assert res.stderr == f"mpiopt: error: --plugin '{broken}' failed to import: ZeroDivisionError: plugin bug\n"


def readme_block(marker: str) -> str:
    """The README's ```python block that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def test_the_readme_gather_compressor_runs(tmp_path):
    """The README's GatherCompressor example, as a plugin file: sgd with it ends where sgd with
    float64 does, to float32's precision, and ef-sgd takes it."""
    script = readme_block("class Float32Gather(GatherCompressor)") + '''
import numpy as np
import mpiopt
from mpiopt.problems import LogisticProblem

rng = np.random.default_rng(0)
A = rng.standard_normal((200, 10))
A /= np.linalg.norm(A, axis=1, keepdims=True)
problem = LogisticProblem(A, np.sign(A @ np.ones(10) + 0.1), l2=1e-2)
ours = mpiopt.minimize(problem, "sgd", compressor="f32-gather", iters=200, batch=20)
ref = mpiopt.minimize(problem, "sgd", iters=200, batch=20)
ef = mpiopt.minimize(problem, "ef-sgd", compressor="f32-gather", iters=200, batch=20)
print(float(np.abs(ours.x - ref.x).max()), ours.trace["history"]["info_bits"][-1], ef.status)
'''
    path = tmp_path / "readme_gather.py"
    path.write_text(script)
    res = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    gap, bits, status = res.stdout.split()
    assert float(gap) < 1e-5 and int(bits) == 200 * 32 * 10 and status == "max_iter"
