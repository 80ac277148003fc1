"""download_file under faults, against a loopback mirror: it completes or fails clearly, and
never leaves a damaged file under the final name."""
import hashlib
import os

import pytest

import gpt_download
from gpt_download import DownloadError, download_file

URL = "https://example.org/files/data.bin"
HOST_PATH = "example.org/files/data.bin"
BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def served(mirror_server, monkeypatch):
    """The mirror serving BODY at URL's HOST/PATH, with GPT2_MIRROR pointing at it."""
    file = mirror_server.root / HOST_PATH
    file.parent.mkdir(parents=True)
    file.write_bytes(BODY)
    monkeypatch.setenv("GPT2_MIRROR", mirror_server.url)
    return mirror_server


def test_downloads_then_makes_no_second_request(served, tmp_path):
    dest = download_file(URL, tmp_path / "out" / "data.bin", sha256=SHA)
    assert dest.read_bytes() == BODY
    assert served.requests == [(HOST_PATH, None)]
    download_file(URL, dest, sha256=SHA)
    assert len(served.requests) == 1


def test_404_names_the_url_and_the_way_out(served, tmp_path):
    served.faults[HOST_PATH] = "404"
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError) as err:
        download_file(URL, dest)
    message = str(err.value)
    assert URL in message and "HTTP 404" in message and "GPT2_MIRROR" in message
    assert str(dest) in message
    assert not dest.exists()


def test_cut_connection_resumes_on_the_next_call(served, tmp_path):
    served.faults[HOST_PATH] = "cut"
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="resume"):
        download_file(URL, dest, sha256=SHA)
    assert not dest.exists()
    partial = tmp_path / "data.bin.part"
    kept = partial.stat().st_size
    assert 0 < kept < len(BODY)

    download_file(URL, dest, sha256=SHA)
    assert dest.read_bytes() == BODY
    assert served.requests[-1] == (HOST_PATH, f"bytes={kept}-")  # only the rest was asked for
    assert not partial.exists()


def test_cut_connection_without_hash_is_caught_by_the_size_check(served, tmp_path):
    served.faults[HOST_PATH] = "cut"
    with pytest.raises(DownloadError, match="resume"):
        download_file(URL, tmp_path / "data.bin")
    assert not (tmp_path / "data.bin").exists()


def test_wrong_bytes_fail_the_hash_and_leave_nothing(served, tmp_path):
    served.faults[HOST_PATH] = "corrupt"
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(URL, dest, sha256=SHA)
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()
    download_file(URL, dest, sha256=SHA)  # the fault was passing: a new call succeeds
    assert dest.read_bytes() == BODY


def test_damaged_final_file_is_fetched_again(served, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"not the data")
    download_file(URL, dest, sha256=SHA)
    assert dest.read_bytes() == BODY


def test_backup_url_is_tried_after_the_main_one(served, tmp_path):
    dest = download_file("https://example.org/files/missing.bin", tmp_path / "d.bin",
                         backup_url=URL)
    assert dest.read_bytes() == BODY
    assert [path for path, _ in served.requests] == ["example.org/files/missing.bin", HOST_PATH]


def test_mirror_can_be_a_folder(tmp_path, monkeypatch):
    file = tmp_path / "mirror" / HOST_PATH
    file.parent.mkdir(parents=True)
    file.write_bytes(BODY)
    monkeypatch.setenv("GPT2_MIRROR", str(tmp_path / "mirror"))
    assert download_file(URL, tmp_path / "d.bin", sha256=SHA).read_bytes() == BODY


def test_unreachable_mirror_says_what_it_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_MIRROR", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(DownloadError) as err:
        download_file(URL, tmp_path / "d.bin")
    assert "http://127.0.0.1:9/" + HOST_PATH in str(err.value)
    assert "GPT2_MIRROR is http://127.0.0.1:9: add the file there" in str(err.value)


def test_without_a_mirror_the_error_explains_how_to_set_one(tmp_path, monkeypatch):
    def no_network(url, partial, label):
        raise DownloadError("unreachable (no network)")

    monkeypatch.delenv("GPT2_MIRROR", raising=False)
    monkeypatch.setattr(gpt_download, "_fetch", no_network)  # stands in for a machine offline
    with pytest.raises(DownloadError, match="set GPT2_MIRROR to a folder"):
        download_file(URL, tmp_path / "d.bin")


# In no mirror the course machines reach (see DATA_FILES); test_hellaswag.py covers its failure.
NOT_MIRRORED = {"hellaswag_val.jsonl"}


def test_course_data_files_download_and_pass_their_hashes(tmp_path):
    """Every data file the course names can be fetched (from GPT2_MIRROR, or the web)."""
    for name in set(gpt_download.DATA_FILES) - NOT_MIRRORED:
        assert gpt_download.fetch_data(name, tmp_path).stat().st_size > 0
    with pytest.raises(ValueError, match="the-verdict.txt"):
        gpt_download.fetch_data("no-such-file.txt", tmp_path)


def test_unknown_model_size_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="124M, 355M, 774M, 1558M"):
        gpt_download.download_gpt2_files("7B", tmp_path)


def test_a_relative_mirror_is_taken_from_the_courses_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a notebook's kernel runs in its chapter folder, say
    monkeypatch.setenv("GPT2_MIRROR", "../shared/mirror")
    expected = (gpt_download.ROOT / "../shared/mirror").resolve() / "example.org/a/b.txt"
    assert gpt_download.mirror_url("https://example.org/a/b.txt") == expected.as_uri()


def test_converting_without_tensorflow_says_what_to_install(monkeypatch, tmp_path):
    real_find_spec = gpt_download.importlib.util.find_spec
    monkeypatch.setattr(gpt_download.importlib.util, "find_spec",
                        lambda name: None if name == "tensorflow" else real_find_spec(name))
    with pytest.raises(ImportError, match="pip install tensorflow"):
        gpt_download.convert_checkpoint(tmp_path)
