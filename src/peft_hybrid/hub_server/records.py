"""What the local Hub server stores: repo references, file entries, commits and operations, and its refusals."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Union

REPO_TYPES = ("model", "dataset", "space")
DEFAULT_BRANCH = "main"
# Files at least this big always go through LFS, like on the Hub.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
# Suffixes tracked by LFS in the .gitattributes of a new repo (a subset of the Hub's default list).
DEFAULT_LFS_SUFFIXES = (
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "gguf",
    "gif",
    "gz",
    "h5",
    "jpeg",
    "jpg",
    "joblib",
    "model",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "ot",
    "parquet",
    "pb",
    "pickle",
    "pkl",
    "png",
    "pt",
    "pth",
    "safetensors",
    "tar",
    "tflite",
    "tgz",
    "wasm",
    "webp",
    "xz",
    "zip",
    "zst",
)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class ApiRefusal(Exception):
    """A refusal with the HTTP status, message and optional ``X-Error-Code`` the Hub would send."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra  # additional JSON fields, e.g. the url of a repo that already exists


def revision_not_found(revision: str) -> ApiRefusal:
    return ApiRefusal(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def now_iso() -> str:
    """Current UTC time in the format the Hub client parses (``%Y-%m-%dT%H:%M:%S.%fZ``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in git for a large file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def default_gitattributes() -> str:
    lines = [f"*.{suffix} filter=lfs diff=lfs merge=lfs -text" for suffix in DEFAULT_LFS_SUFFIXES]
    return "\n".join(lines) + "\n"


def lfs_patterns(gitattributes: str) -> list[str]:
    """Patterns that a .gitattributes file routes through LFS."""
    return [
        line.split()[0]
        for line in gitattributes.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and "filter=lfs" in line.split()[1:]
    ]


def matches_any(path: str, patterns: Iterable[str]) -> bool:
    """Simplified git pattern match: patterns without '/' match the basename, others the whole path."""
    base = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else base, p.lstrip("/")) for p in patterns)


@dataclass(frozen=True, order=True)
class RepoRef:
    """Identity of a repo: type (model/dataset/space), namespace (owner) and name."""

    type: str
    namespace: str
    name: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_path(self) -> str:
        """Path of the repo's web page: models have no type prefix, the others do."""
        return self.repo_id if self.type == "model" else f"{self.type}s/{self.repo_id}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit snapshot."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob id: of the content for regular files, of the LFS pointer for LFS files

    @classmethod
    def regular(cls, data: bytes) -> FileEntry:
        return cls(hashlib.sha256(data).hexdigest(), len(data), False, git_blob_sha1(data))

    @classmethod
    def large(cls, sha256: str, size: int) -> FileEntry:
        return cls(sha256, size, True, git_blob_sha1(lfs_pointer(sha256, size)))

    @property
    def etag(self) -> str:
        """What the Hub sends as (linked) ETag: the sha256 for LFS files, the git oid otherwise."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    parents: list[str]
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = {path: asdict(entry) for path, entry in sorted(self.files.items())}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        files = {path: FileEntry(**entry) for path, entry in data.pop("files").items()}
        return cls(files=files, **data)

    def folders(self) -> set[str]:
        """Every folder that holds at least one file ("" is the root)."""
        out = {""}
        for path in self.files:
            parts = path.split("/")[:-1]
            out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return out

    def folder_oid(self, folder: str) -> str:
        prefix = folder + "/" if folder else ""
        listing = "".join(f"{p}\0{e.git_oid}\n" for p, e in sorted(self.files.items()) if p.startswith(prefix))
        return hashlib.sha1(listing.encode()).hexdigest()


@dataclass(frozen=True)
class AddFile:
    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


Operation = Union[AddFile, DeleteFile, DeleteFolder]
