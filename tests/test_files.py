"""nst_jax.files: the one atomic write (and every writer that uses it), file digests and array digests."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest

from nst_jax import files


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture
def umask_027():
    """A umask other than the usual 022, so a hard-coded mode cannot pass by accident."""
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_atomic_write_bytes_text_and_writer(tmp_path, umask_027):
    p = files.atomic_write(tmp_path / "new" / "a.bin", b"\x00\x01")
    assert p == tmp_path / "new" / "a.bin" and p.read_bytes() == b"\x00\x01"
    assert _mode(p) == umask_027  # 0o666 & ~umask, not mkstemp's 0o600
    files.atomic_write(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    files.atomic_write(tmp_path / "w.bin", lambda f: f.write(b"abc"))
    assert (tmp_path / "w.bin").read_bytes() == b"abc"
    assert sorted(os.listdir(tmp_path)) == ["new", "t.txt", "w.bin"]


def test_atomic_write_refuses_or_replaces(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(FileExistsError):
        files.atomic_write(p, "new")
    assert p.read_text() == "old"
    files.atomic_write(p, "new", overwrite=True)
    assert p.read_text() == "new"


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")

    def half(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(p, half, overwrite=True)
    assert p.read_text() == "old"
    with pytest.raises(RuntimeError):
        files.atomic_write(tmp_path / "b.txt", lambda f: (_ for _ in ()).throw(RuntimeError("boom")))
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_temp_file_beside_and_move_into_place(tmp_path, umask_027):
    target = tmp_path / "clip.mp4"
    tmp = files.temp_file_beside(target, suffix=".mp4")
    assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp.name.startswith(".clip.mp4.")
    assert _mode(tmp) == 0o600  # private while being written
    tmp.write_bytes(b"frames")
    assert files.move_into_place(tmp, target) == target
    assert target.read_bytes() == b"frames" and not tmp.exists() and _mode(target) == umask_027


def test_default_file_mode_matches_the_umask(umask_027):
    assert files.default_file_mode() == umask_027
    assert _umask() == 0o027  # reading it did not change it


def test_file_digests_match_hashlib(tmp_path):
    data = os.urandom(3 * files.CHUNK + 17)
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert files.file_digest(p) == hashlib.sha256(data).hexdigest()
    assert files.file_digest(p, "md5") == hashlib.md5(data).hexdigest()
    assert files.file_digests(p, ("sha256", "md5")) == (hashlib.sha256(data).hexdigest(),
                                                        hashlib.md5(data).hexdigest())


def test_array_digest_depends_on_values_shape_and_dtype(rng):
    a = rng.random((1, 4, 6, 3)).astype(np.float32)
    d = files.array_digest(a)
    assert d == files.array_digest(a.copy()) == files.array_digest(np.asfortranarray(a))
    assert d != files.array_digest(a.reshape(1, 6, 4, 3))  # same bytes, other shape
    assert d != files.array_digest(a.astype(np.float64))
    b = a.copy()
    b[0, 0, 0, 0] += 1e-7
    assert d != files.array_digest(b)


def test_every_writer_gives_files_the_default_permissions(tmp_path, umask_027):
    """The writers that once made 0600 files through mkstemp (save_npz, the download sidecar) and the others."""
    from nst_jax.image import save_image
    from nst_jax.training import write_json
    from nst_jax.weights import download
    from nst_jax.weights.npz import load_npz, save_npz

    npz = save_npz(tmp_path / "w.npz", {"conv1_1": {"kernel": np.ones((1, 1, 3, 4)), "bias": np.zeros(4)}},
                   {"kind": "adain_decoder"})
    assert _mode(npz) == umask_027
    params, meta = load_npz(npz)
    assert params["conv1_1"]["kernel"].shape == (1, 1, 3, 4) and meta["kind"] == "adain_decoder"
    assert _mode(save_image(tmp_path / "i.png", np.zeros((2, 2, 3), np.float32))) == umask_027
    write_json(tmp_path / "config.json", {"a": 1})
    assert _mode(tmp_path / "config.json") == umask_027
    (tmp_path / "f.bin").write_bytes(b"x")
    download._write_sidecar(tmp_path / "f.bin", "ab" * 32)
    assert _mode(tmp_path / "f.bin.sha256") == umask_027
    assert download.recorded_sha256(tmp_path / "f.bin") == "ab" * 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "f.bin", "f.bin.sha256", "i.png", "w.npz"]
