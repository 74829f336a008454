"""`download` without the network: credentials detection, the advice when there are none, and unpacking."""
import io
import zipfile

import pytest

from nuclei.data import download as dl
from nuclei.data.download import NO_CREDENTIALS, download, has_credentials, is_complete, unpack_nested
from nuclei.errors import DataError


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle_config"))
    return tmp_path / "kaggle_config"


def test_no_credentials(no_credentials):
    assert not has_credentials()


def test_credentials_from_environment(no_credentials, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    assert not has_credentials()  # a user name alone is not enough
    monkeypatch.setenv("KAGGLE_KEY", "0123")
    assert has_credentials()


def test_credentials_from_kaggle_json(no_credentials):
    no_credentials.mkdir()
    (no_credentials / "kaggle.json").write_text('{"username": "someone", "key": "0123"}')
    assert has_credentials()


def test_download_without_credentials_explains_what_to_do(no_credentials, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the kaggle CLI must not be called")

    monkeypatch.setattr(dl.subprocess, "run", never)
    root = tmp_path / "data" / "dsb2018"
    with pytest.raises(DataError) as info:
        download(root)
    message = str(info.value)
    assert message == NO_CREDENTIALS.format(root=root)
    for hint in (str(root), "DSB_DATA", "kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "rules"):
        assert hint in message
    assert not root.exists()  # nothing created on the way out


def test_download_skips_when_data_is_there(no_credentials, tmp_path, monkeypatch):
    monkeypatch.setattr(dl.subprocess, "run", lambda *a, **k: pytest.fail("the kaggle CLI must not be called"))
    (tmp_path / "stage1_train").mkdir()
    (tmp_path / "stage1_test").mkdir()
    assert is_complete(tmp_path)
    assert download(tmp_path) == tmp_path


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        for name, data in files.items():
            handle.writestr(name, data)
    return buffer.getvalue()


def test_unpack_nested_gives_the_kaggle_layout(tmp_path):
    png = b"\x89PNG fake"
    train = zip_bytes({"abc/images/abc.png": png, "abc/masks/m1.png": png})
    test = zip_bytes({"def/images/def.png": png})
    sample = zip_bytes({"stage1_sample_submission.csv": b"ImageId,EncodedPixels\ndef,1 1\n"})
    outer = zip_bytes({"stage1_train.zip": train, "stage1_test.zip": test,
                       "stage1_sample_submission.csv.zip": sample})
    (tmp_path / "data-science-bowl-2018.zip").write_bytes(outer)

    unpack_nested(tmp_path)  # the competition archive -> one zip per split
    assert (tmp_path / "stage1_train.zip").is_file()
    unpack_nested(tmp_path)  # each split zip -> its folder
    assert is_complete(tmp_path)
    assert (tmp_path / "stage1_train" / "abc" / "images" / "abc.png").read_bytes() == png
    assert (tmp_path / "stage1_train" / "abc" / "masks" / "m1.png").is_file()
    assert (tmp_path / "stage1_test" / "def" / "images" / "def.png").is_file()
    assert (tmp_path / "stage1_sample_submission.csv").read_text().startswith("ImageId,EncodedPixels")
    assert not list(tmp_path.glob("*.zip"))  # archives removed once unpacked


def test_unpack_nested_without_zips_does_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    unpack_nested(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
