"""A local stand-in for the Hugging Face Hub, for the `framepack download` tests (no internet).

Serves repositories made of local files on 127.0.0.1 (a free port, a thread) in the hub's URL layout, with the
headers huggingface_hub 2.x reads:

- `GET /api/models/{repo}/revision/{rev}[?blobs=true]`: `{"id", "sha", "siblings": [{"rfilename", "size",
  "blobId", "lfs": {"sha256", "size", "pointerSize"}}]}` (model_info with files_metadata);
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`, `ETag` (the sha256 for LFS files, as the hub does),
  `Content-Length`, `Accept-Ranges`; a `Range: bytes=N-` request gets a 206 with `Content-Range`;
- 404s carry `X-Error-Code: RepoNotFound | EntryNotFound` like the hub's.

Faults for tests: `cut_once` (paths whose first GET stops half-way and drops the connection), `missing` (paths that
the listing names but resolve answers 404), `corrupt` (paths served with one byte changed). Every request is logged
in `requests` as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".pt", ".bin")


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, Path]]):
        self.repos = repos
        self.cut_once: set[str] = set()
        self.missing: set[str] = set()
        self.corrupt: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        self._cut_done: set[str] = set()
        self._sha: dict[Path, str] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------------------------------------------
    def sha256(self, p: Path) -> str:
        if p not in self._sha:
            self._sha[p] = hashlib.sha256(p.read_bytes()).hexdigest()
        return self._sha[p]

    def _content(self, repo: str, path: str) -> bytes:
        data = self.repos[repo][path].read_bytes()
        if path in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        return data

    def _listing(self, repo: str) -> dict:
        siblings = []
        for path, local in sorted(self.repos[repo].items()):
            data = local.read_bytes()
            sib = {"rfilename": path, "size": len(data), "blobId": _git_sha(data)}
            if path.endswith(LFS_SUFFIXES):
                sib["lfs"] = {"sha256": self.sha256(local), "size": len(data), "pointerSize": 134}
            siblings.append(sib)
        return {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, code: str, head: bool) -> None:
        body = json.dumps({"error": code}).encode()
        h.send_response(404)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _find_repo(self, rest: str) -> tuple[str, str] | None:
        for repo in self.repos:
            if rest.startswith(repo + "/"):
                return repo, rest[len(repo) + 1:]
        return None

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        self.requests.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        if path.startswith("/api/models/"):
            found = self._find_repo(path[len("/api/models/"):])
            if found is None:
                return self._error(h, "RepoNotFound", head)
            repo, tail = found
            if not tail.startswith("revision/"):
                return self._error(h, "RevisionNotFound", head)
            body = json.dumps(self._listing(repo)).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
            return None
        found = self._find_repo(path.lstrip("/"))
        if found is None or "/resolve/" not in "/" + found[1]:
            return self._error(h, "RepoNotFound", head)
        repo, tail = found
        _, _, rest = tail.partition("resolve/")
        _rev, _, file = rest.partition("/")
        if file not in self.repos[repo] or file in self.missing:
            return self._error(h, "EntryNotFound", head)
        data = self._content(repo, file)
        local = self.repos[repo][file]
        etag = self.sha256(local) if file.endswith(LFS_SUFFIXES) else _git_sha(local.read_bytes())
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0] or 0)
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{etag}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if head:
            return None
        body = data[start:]
        if file in self.cut_once and file not in self._cut_done:
            self._cut_done.add(file)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            try:
                h.connection.shutdown(2)  # drop it mid-body: the client sees an incomplete transfer
            except OSError:
                pass
            return None
        h.wfile.write(body)
        return None


def golden_repos(models: Path) -> dict[str, dict[str, Path]]:
    """The tiny golden models laid out as the catalog's repositories (see /work/shared/golden/README.md):
    `models/` is a hunyuanvideo-community-style snapshot; `dit_sharded/` is the lllyasviel repo layout (the tiny
    set has 2 shards, the real one 3: the catalog matches shard names by pattern); `image_encoder/` and
    `feature_extractor/` are flux_redux_bfl's; `dit_single.safetensors` stands for Kijai's single file."""
    def tree(base: Path, sub: str) -> dict[str, Path]:
        return {f"{sub}/{p.name}": p for p in sorted((base / sub).iterdir()) if p.is_file()}

    hv = {}
    for sub in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        hv.update(tree(models, sub))
    dit = {p.name: p for p in sorted((models / "dit_sharded").iterdir())}
    redux = {**tree(models, "image_encoder"), **tree(models, "feature_extractor")}
    return {
        "hunyuanvideo-community/HunyuanVideo": hv,
        "lllyasviel/FramePackI2V_HY": dit,
        "lllyasviel/FramePack_F1_I2V_HY_20250503": dict(dit),
        "lllyasviel/flux_redux_bfl": redux,
        "Kijai/HunyuanVideo_comfy": {"FramePackI2V_HY_bf16.safetensors": models / "dit_single.safetensors"},
    }
