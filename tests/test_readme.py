"""The README's Python example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch.Size([64])" in done.stdout
    assert "envelope_size=9, order=env-conv, sigma=per-channel" in done.stdout
    assert re.search(r"^0 64 3 0\.83\d+ 0\.83\d+ 0\.83\d+$", done.stdout, flags=re.M)
    # the model-conversion example prints what its comments say
    assert re.search(r"^layer2\.0\.conv2 +C=  128  k_g=9  sigma mean 0\.833$", done.stdout, flags=re.M)
    assert len(re.findall(r"^(conv1|layer[234]\.0\.(conv2|downsample\.0)) +C=", done.stdout, flags=re.M)) == 7
    assert "torch.Size([2, 10])" in done.stdout
