"""kmlp.data.fetch: names.txt is downloaded only when missing, kept only once its hash is verified, and
a verified copy beside the project is used instead of the network."""

import hashlib
import urllib.error
import urllib.request

import pytest

from kmlp.data import fetch
from kmlp.errors import DataError


class _FakeResponse:
    def __init__(self, body):
        self.body = body

    def read(self):
        return self.body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_is_verified_before_it_is_kept(tmp_path, monkeypatch):
    body = b"emma\nava\n"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(body))
    dest = tmp_path / "data" / "names.txt"
    with pytest.raises(DataError, match="does not match"):
        fetch.download_names(dest, url="https://example.invalid/names.txt", sha256="0" * 64)
    assert not dest.exists() and not list(dest.parent.iterdir())  # nothing half-written is left
    good = hashlib.sha256(body).hexdigest()
    assert fetch.download_names(dest, url="https://example.invalid/names.txt", sha256=good) == dest
    assert dest.read_bytes() == body


def test_offline_download_says_how_to_provide_the_file(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        fetch.download_names(tmp_path / "names.txt")
    message = str(err.value)
    assert "\n" not in message and "--data PATH" in message and fetch.NAMES_URL in message


def test_default_data_path_prefers_data_dir_then_verified_copy(tmp_path, monkeypatch, names_path):
    project = tmp_path / "project"
    monkeypatch.setattr(fetch, "PROJECT_ROOT", project)
    monkeypatch.setattr(fetch, "DEFAULT_DATA", project / "data" / "names.txt")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "names.txt").write_bytes(names_path.read_bytes())
    assert fetch.resolve_data_path() == tmp_path / "shared" / "data" / "names.txt"
    (project / "data").mkdir(parents=True)
    (project / "data" / "names.txt").write_text("emma\n")
    assert fetch.resolve_data_path() == project / "data" / "names.txt"
    assert fetch.resolve_data_path("elsewhere.txt") == fetch.Path("elsewhere.txt")
