"""Generate one token with the shipped model in a child process: does llama.cpp run here?

``python -m wattpool.engines.smoke`` exits 0 when it does, 1 (with the reason) when the
engine crashed or failed. scripts/bootstrap.sh runs it after installing llama-cpp-python,
because a build can import fine and still crash at the first matrix product on a CPU it
was not meant for.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
out = llm("Hello", max_tokens=1, temperature=0)
assert out["usage"]["completion_tokens"] >= 0
"""


def main() -> int:
    from wattpool.engines.models import assemble_default

    with tempfile.TemporaryDirectory() as tmp:
        model = assemble_default(Path(tmp))
        done = subprocess.run([sys.executable, "-c", _CHILD, str(model)],
                              capture_output=True, text=True, timeout=300)
    if done.returncode == 0:
        print("llama.cpp smoke test: one token generated")
        return 0
    why = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
    print(f"llama.cpp smoke test failed ({why}): {done.stderr.strip()[-400:]}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
