"""A ZeRO-3 stage's consolidated ``final/`` is the model the ranks held, as a plain HF folder.

``distributed_scripts/zero3_gather.py`` trains CPT for 4 steps under ZeRO-3 on
2 ranks through the real ``train_stage``; at the end of training a callback
all-gathers the partitioned weights in memory and rank 0 saves them. The
folder ``train_stage`` wrote must hold exactly those tensors and load with a
plain ``from_pretrained`` in a fresh process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests import jobs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, isolated_cache):
    out = tmp_path_factory.mktemp("zero3-export")
    cmd = [str(jobs.BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
           str(jobs.ROOT / "tests" / "distributed_scripts" / "zero3_gather.py"), str(out)]
    jobs.ok(subprocess.run(cmd, cwd=jobs.ROOT, env=jobs.env(), capture_output=True, text=True, timeout=600))
    return out


def test_consolidated_final_equals_gathered_in_memory_weights(zero3_run):
    gathered = load_file(zero3_run / "gathered.safetensors")
    final = load_file(zero3_run / "cpt" / "final" / "model.safetensors")
    assert sorted(final) == sorted(gathered) and len(final) > 10
    for name, tensor in gathered.items():
        assert final[name].dtype == tensor.dtype, name
        assert final[name].equal(tensor), f"{name} differs from the gathered weights"


def test_consolidated_final_loads_with_plain_from_pretrained(zero3_run):
    code = (
        "import sys, torch; from safetensors.torch import load_file\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "path, ref = sys.argv[1], load_file(sys.argv[2])\n"
        "model = AutoModelForCausalLM.from_pretrained(path); tok = AutoTokenizer.from_pretrained(path)\n"
        "state = model.state_dict()\n"
        "assert all(state[k].to(ref[k].dtype).equal(ref[k]) for k in ref), 'loaded weights differ'\n"
        "assert state['lm_head.weight'].data_ptr() == state['model.embed_tokens.weight'].data_ptr()\n"
        "out = model.generate(**tok('def ', return_tensors='pt'), max_new_tokens=4, do_sample=False)\n"
        "print('loaded', len(ref), out.shape[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(zero3_run / "cpt" / "final"),
                           str(zero3_run / "gathered.safetensors")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "loaded"
