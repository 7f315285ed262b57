"""fp16, bf16, topk and dgc exchanges over a real ``mpiexec -n 3`` (see _new_compressors.py for the
references): means bit for bit against numpy, the same on every rank and in reversed rank order
(fp16: an exactly summable case, as its float16 Allreduce sums in the MPI library's order), bytes
counted = bytes on the wire, DGC's count along its warm-up, and a NaN on one rank stopping all."""

import json
from pathlib import Path

from mpilaunch import run_script

HERE = Path(__file__).resolve().parent


def test_new_compressors_on_three_ranks(tmp_path):
    out = tmp_path / "facts.json"
    res = run_script(3, HERE / "_new_compressors.py", out, timeout=240)
    assert res.returncode == 0, f"mpiexec failed:\n{res.stdout}\n{res.stderr}"
    facts = json.loads(out.read_text())
    assert len(facts) > 50
    failed = {fact: got for fact, got in facts.items() if got is not True}
    assert not failed, json.dumps(failed, indent=1)
