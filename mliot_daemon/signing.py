"""Model versions that cross the network: packed as a tar, signed with HMAC-SHA256.

The key is the receiving daemon's peer secret (``daemon.peer_secret``), which the sender holds
as that peer's ``[[peers]] secret``; devices never hold it. The signature covers the origin
daemon's name, the app, the version and the model id as well as the bytes, so a signed
archive cannot be replayed as another app's model. The receiver checks the signature over the
whole body before it unpacks anything, and the archive holds a portable model
(``learn.portable``: arrays and JSON), never a pickle.
"""

from __future__ import annotations

import hashlib
import hmac
import tarfile
import tempfile
from pathlib import Path
from typing import IO

HEADER = "X-Mliot-Signature"
MODEL_HEADER = "X-Mliot-Model"  # the origin's model id (registry.model_id), signed too
PREFIX = "hmac-sha256="
CHUNK = 1 << 20


class BadSignature(Exception):
    """The archive is unsigned, or signed with another key, or for another model."""


def signer(key: str, origin: str, app: str, version: int, model: str) -> hmac.HMAC:
    """An HMAC already fed with what the archive is for; feed it the body's bytes."""
    mac = hmac.new(key.encode(), digestmod=hashlib.sha256)
    mac.update(f"mliot-model\n{origin}\n{app}\n{version}\n{model}\n".encode())
    return mac


def pack(directory: Path, scratch: Path) -> tuple[IO[bytes], int]:
    """A folder (a portable model) as an uncompressed tar (npz files hardly compress)
    in an anonymous temp file under ``scratch`` (not /tmp, often RAM on small boards),
    rewound; and its size."""
    out = tempfile.TemporaryFile(dir=scratch)  # noqa: SIM115 - the caller closes it
    try:
        with tarfile.open(fileobj=out, mode="w") as tar:
            for path in sorted(directory.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    except BaseException:
        out.close()
        raise
    size = out.tell()
    out.seek(0)
    return out, size


def sign_file(key: str, origin: str, app: str, version: int, model: str, f: IO[bytes]
              ) -> str:
    """The signature header value for the archive in ``f`` (rewound afterwards)."""
    mac = signer(key, origin, app, version, model)
    while chunk := f.read(CHUNK):
        mac.update(chunk)
    f.seek(0)
    return PREFIX + mac.hexdigest()


def check(mac: hmac.HMAC, header: str | None) -> None:
    """Raise BadSignature unless ``header`` is the digest ``mac`` computed."""
    if not header or not header.startswith(PREFIX):
        raise BadSignature(f"missing {HEADER}: model archives must be signed")
    if not hmac.compare_digest(header[len(PREFIX):].encode(errors="replace"),
                               mac.hexdigest().encode()):
        raise BadSignature("bad signature: not signed with this daemon's peer secret for this "
                           "model")


class ArchiveRefused(ValueError):
    """The archive holds something other than the files a model transfer may hold."""


def unpack(archive: IO[bytes], dest: Path, names: tuple[str, ...]) -> None:
    """Extract a verified archive whose members are all regular files among ``names`` (a
    portable model: arrays and JSON, never a pickle); anything else is refused before a byte
    is extracted. The ``data`` filter still refuses links and paths that would leave ``dest``."""
    with tarfile.open(fileobj=archive, mode="r") as tar:
        members = tar.getmembers()
        for m in members:
            if not m.isfile() or m.name not in names:
                raise ArchiveRefused(
                    f"archive member {m.name!r} refused: a model transfer holds only "
                    f"{', '.join(names)} (arrays and JSON, never pickles)")
        tar.extractall(dest, members=members, filter="data")
