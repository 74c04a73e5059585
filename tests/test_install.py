"""The package as a user installs it: a wheel with the C++ kernel built in, used without a compiler.

Builds a wheel of this checkout (``pip wheel``, the kernel compiled by ``setup.py``), unpacks it into
a fresh folder, and runs a forward and backward through the C++ kernel from there with no compiler
or ninja on PATH and the home and extension cache pointing at folders that do not exist: the
packaged kernel must be the one that ran, and nothing may be compiled.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import json, sys, torch, envconv
from envconv.ops import cpu
x = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
raw = torch.zeros(3, dtype=torch.float64, requires_grad=True)
y = envconv.functional.gaussian_envelope(x, raw, 5, stride=2, impl="cpp")
gx, gr = torch.autograd.grad(y.square().sum(), (x, raw))
ref = envconv.functional.gaussian_envelope(x, raw, 5, stride=2, impl="separable")
rx, rr = torch.autograd.grad(ref.square().sum(), (x, raw))
print(json.dumps({"file": envconv.__file__, "origin": cpu.origin, "forward": (y - ref).abs().max().item(),
                  "grad_x": (gx - rx).abs().max().item(), "grad_raw": (gr - rr).abs().max().item()}))
"""


@pytest.mark.slow
def test_a_built_wheel_runs_its_packaged_kernel_without_a_compiler(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True,
                           env={**os.environ, "ENVCONV_CPU_ARCH": "x86-64-v2"})
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("envconv-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "envconv/_C.so" in names and "envconv/csrc/envelope_cpu.cpp" in names
        record = json.loads(archive.read("envconv/_C.json"))
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        archive.extractall(tmp_path / "site")
    assert record["march"] == "x86-64-v2" and record["cpu"] is None
    release = ".".join(record["torch"].split("+")[0].split(".")[:2])
    assert f"Requires-Dist: torch=={release}.*" in metadata  # the one torch release its ABI fits
    env = {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path / "no-home"),
           "TORCH_EXTENSIONS_DIR": str(tmp_path / "no-cache"), "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(tmp_path / "site")) and result["origin"] == "package"
    assert result["forward"] < 1e-12 and result["grad_x"] < 1e-12 and result["grad_raw"] < 1e-10
    assert "building" not in done.stderr and not (tmp_path / "no-cache").exists()  # nothing compiled
