import subprocess
import sys

FORBIDDEN = ["transformers", "peft", "trl", "gymnasium", "safety_gymnasium", "vllm", "control", "datasets"]


def test_core_imports_no_track_or_heavy_library():
    code = f"import sys, safecrowd_llm.core; print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"safecrowd_llm.core pulled in: {out}"
