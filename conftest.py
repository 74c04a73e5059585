"""Keep the temporary files of every test, doctest and docs example inside pytest's own folder.

Examples that call ``tempfile`` (a docstring's ``mkdtemp``, a docs page's scratch directory, a
subprocess) would otherwise leave their files in the system's temporary folder after each run;
pytest keeps only its last three base folders, so the files go with them.
"""

import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_pytest(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tempfile"))
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = folder, folder
    yield
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[1]
