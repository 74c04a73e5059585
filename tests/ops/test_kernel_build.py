"""Where the C++ kernel comes from: the library built with the package, else a compile on first use.

``setup.py`` builds ``envconv/_C.so`` with its build record ``_C.json``; envconv loads it only for
the torch and CPU it was built for, and otherwise compiles the kernel (announced) into a cache
named by :func:`envconv.ops.cpu.build_tag`.
"""

import importlib.metadata
import json
import os
import re
import shutil

import pytest
import torch

from envconv.ops import cpu
from envconv.ops.build_info import INFO, LIBRARY, cpu_tag


def _package(tmp_path, record, library=True):
    if library:
        (tmp_path / LIBRARY).write_bytes(b"\x7fELF")
    if record is not None:
        (tmp_path / INFO).write_text(record if isinstance(record, str) else json.dumps(record))
    return tmp_path


def test_the_packaged_kernel_is_used_only_for_its_torch_and_cpu(tmp_path):
    native = {"torch": torch.__version__, "march": "native", "cpu": cpu_tag()}
    portable = {"torch": torch.__version__, "march": "x86-64-v2", "cpu": None}
    for name, record in {"native": native, "portable": portable}.items():
        (tmp_path / name).mkdir()
        assert cpu.packaged_mismatch(_package(tmp_path / name, record)) is None
    cases = {"missing": (None, True, "not built with its kernel"),
             "no-record": (None, "record", "build record .* is missing or unreadable"),
             "corrupt": ("{not json", "record", "missing or unreadable"),
             "other-torch": ({**native, "torch": "2.13.0"}, "record", "built for torch 2.13.0, this is torch"),
             "other-cpu": ({**native, "cpu": "0000000000"}, "record", "-march=native on a CPU with other")}
    for name, (record, library, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        _package(folder, record, library=library == "record")
        assert re.search(message, cpu.packaged_mismatch(folder)), name


def test_an_installed_envconv_loads_the_kernel_built_with_the_package():
    # make venv installs the package with its kernel (pip install -e .): the tests run on that kernel
    try:
        importlib.metadata.distribution("envconv")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("envconv is not installed here (a source tree on PYTHONPATH compiles on first use)")
    if os.environ.get("ENVCONV_NO_EXTENSION", "") not in ("", "0"):
        pytest.skip("ENVCONV_NO_EXTENSION is set")
    assert cpu.packaged_mismatch() is None
    assert cpu.load() and cpu.origin == "package"


def test_without_a_packaged_kernel_the_first_build_is_announced(monkeypatch, capsys, tmp_path):
    import torch.utils.cpp_extension

    built = []
    monkeypatch.setattr(cpu, "_loaded", False)
    monkeypatch.setattr(cpu, "_failed", None)
    monkeypatch.setattr(cpu, "_PACKAGE", tmp_path)  # a source tree: no _C.so
    monkeypatch.setattr(cpu, "_is_built", lambda name: False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: built.append(kwargs["name"]))
    assert cpu.load() and built == [f"envconv_envelope_cpu_{cpu.build_tag()}"] and cpu.origin == "jit"
    err = capsys.readouterr().err
    assert "building the C++ CPU envelope kernel (once per environment" in err
    assert re.search(r"built the C\+\+ CPU envelope kernel in \d+ s", err)
    monkeypatch.setattr(cpu, "_loaded", False)
    monkeypatch.setattr(cpu, "_is_built", lambda name: True)
    assert cpu.load()
    assert capsys.readouterr().err == ""  # cached: no message


def test_a_packaged_kernel_for_another_torch_is_not_loaded_and_the_compile_says_why(monkeypatch, capsys, tmp_path):
    import torch.utils.cpp_extension

    package = _package(tmp_path, {"torch": "2.13.0", "march": "native", "cpu": cpu_tag()})
    loaded, built = [], []
    monkeypatch.setattr(cpu, "_PACKAGE", package)
    monkeypatch.setattr(cpu, "_loaded", False)
    monkeypatch.setattr(cpu, "_failed", None)
    monkeypatch.setattr(cpu, "_is_built", lambda name: True)
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: built.append(kwargs["name"]))
    assert cpu.load() and loaded == [] and len(built) == 1 and cpu.origin == "jit"
    assert "not loading the package's C++ kernel: it was built for torch 2.13.0" in capsys.readouterr().err


def test_the_kernels_build_name_changes_with_torch_its_install_and_the_source(monkeypatch, tmp_path):
    """Two environments on one machine (or a torch upgrade, or an edited kernel) never share a build."""
    tag = cpu.build_tag()
    assert re.fullmatch(r"[0-9a-f]{12}", tag) and cpu.build_tag() == tag
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    assert cpu.build_tag() != tag
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__file__", str(tmp_path / "other-venv" / "torch" / "__init__.py"))
    assert cpu.build_tag() != tag
    monkeypatch.undo()
    source = tmp_path / "envelope_cpu.cpp"
    shutil.copyfile(cpu._SOURCE, source)
    source.write_bytes(source.read_bytes() + b"// edited\n")
    monkeypatch.setattr(cpu, "_SOURCE", source)
    assert cpu.build_tag() != tag
