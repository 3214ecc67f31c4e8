# Copyright: Contributors to the ecrkit.images project
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""On-disk state of the emulator under --data.

    blobs/sha256/<hex>          layer and config blobs, content-addressed, shared by all repositories
    manifests/sha256/<hex>      manifests, byte for byte as pushed, keyed by image digest
    repositories/<region>/<registry id>/<quoted name>.json
                                one JSON document per repository: settings, layer membership,
                                images and tags (written atomically: temp file + rename)
    uploads/<upload id>.part    bytes of layer uploads in progress
    url-secret                  key of the blob URL signatures (so URLs survive a restart)

Metadata changes happen under one re-entrant lock; blob bytes are written
outside it and appear under their digest only through an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote, unquote


def atomic_write(path: str, data: bytes) -> None:
    tmp = f'{path}.tmp-{uuid.uuid4().hex}'
    with open(tmp, 'wb') as handle:
        handle.write(data)
    os.replace(tmp, path)


class Upload:
    """A layer upload in progress: parts are appended in order and hashed as
    they arrive, so completion does not read the data again."""

    def __init__(self, upload_id: str, region: str, registry_id: str, repository: str, path: str) -> None:
        self.upload_id = upload_id
        self.region = region
        self.registry_id = registry_id
        self.repository = repository
        self.path = path
        self.lock = threading.Lock()
        self.received = 0
        self.part_sizes: List[int] = []
        self.hasher = hashlib.sha256()
        self.handle = open(path, 'wb')  # pylint: disable=consider-using-with
        self.finished = False

    def append(self, data: bytes) -> None:
        self.handle.write(data)
        self.hasher.update(data)
        self.received += len(data)
        self.part_sizes.append(len(data))

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Store:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.lock = threading.RLock()
        for sub in ('blobs/sha256', 'manifests/sha256', 'repositories', 'uploads'):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        # Uploads do not survive a restart (ECR expires them too); drop leftovers.
        for name in os.listdir(self.uploads_dir):
            os.unlink(os.path.join(self.uploads_dir, name))
        self.uploads: Dict[str, Upload] = {}
        self._repos: Dict[Tuple[str, str], Dict[str, Dict[str, Any]]] = {}
        self._load()

    @property
    def uploads_dir(self) -> str:
        return os.path.join(self.root, 'uploads')

    def url_secret(self) -> bytes:
        path = os.path.join(self.root, 'url-secret')
        with self.lock:
            if not os.path.exists(path):
                fd = os.open(path + '.new', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, 'wb') as handle:
                    handle.write(os.urandom(32).hex().encode('ascii'))
                os.replace(path + '.new', path)
            with open(path, 'rb') as handle:
                return handle.read().strip()

    # -- repositories ----------------------------------------------------------

    def _repo_path(self, region: str, registry_id: str, name: str) -> str:
        return os.path.join(self.root, 'repositories', region, registry_id, quote(name, safe='') + '.json')

    def _load(self) -> None:
        base = os.path.join(self.root, 'repositories')
        for region in sorted(os.listdir(base)):
            for registry_id in sorted(os.listdir(os.path.join(base, region))):
                directory = os.path.join(base, region, registry_id)
                for filename in sorted(os.listdir(directory)):
                    if not filename.endswith('.json'):
                        continue  # a temp file left by a crash
                    with open(os.path.join(directory, filename), 'rb') as handle:
                        repo = json.loads(handle.read().decode('utf-8'))
                    self._repos.setdefault((region, registry_id), {})[unquote(filename[:-5])] = repo

    def get_repo(self, region: str, registry_id: str, name: str) -> Optional[Dict[str, Any]]:
        with self.lock:
            return self._repos.get((region, registry_id), {}).get(name)

    def list_repos(self, region: str, registry_id: str) -> List[Dict[str, Any]]:
        with self.lock:
            repos = list(self._repos.get((region, registry_id), {}).values())
        return sorted(repos, key=lambda repo: repo['repositoryName'])

    def save_repo(self, repo: Dict[str, Any]) -> None:
        with self.lock:
            region, registry_id, name = repo['region'], repo['registryId'], repo['repositoryName']
            path = self._repo_path(region, registry_id, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, json.dumps(repo, indent=1, sort_keys=True).encode('utf-8'))
            self._repos.setdefault((region, registry_id), {})[name] = repo

    def delete_repo(self, repo: Dict[str, Any]) -> None:
        with self.lock:
            region, registry_id, name = repo['region'], repo['registryId'], repo['repositoryName']
            self._repos.get((region, registry_id), {}).pop(name, None)
            try:
                os.unlink(self._repo_path(region, registry_id, name))
            except FileNotFoundError:
                pass

    # -- blobs and manifests ---------------------------------------------------

    def blob_path(self, digest: str) -> str:
        algorithm, dummy, hexpart = digest.partition(':')
        return os.path.join(self.root, 'blobs', algorithm, hexpart)

    def blob_size(self, digest: str) -> Optional[int]:
        try:
            return os.path.getsize(self.blob_path(digest))
        except OSError:
            return None

    def commit_blob(self, temp_path: str, digest: str) -> None:
        """Move a verified upload into the blob store (or drop it when the
        store already has those bytes)."""
        target = self.blob_path(digest)
        if os.path.exists(target):
            os.unlink(temp_path)
        else:
            os.replace(temp_path, target)

    def _manifest_path(self, digest: str) -> str:
        algorithm, dummy, hexpart = digest.partition(':')
        return os.path.join(self.root, 'manifests', algorithm, hexpart)

    def write_manifest(self, digest: str, raw: bytes) -> None:
        path = self._manifest_path(digest)
        if not os.path.exists(path):
            atomic_write(path, raw)

    def read_manifest(self, digest: str) -> bytes:
        with open(self._manifest_path(digest), 'rb') as handle:
            return handle.read()

    # -- uploads ---------------------------------------------------------------

    def create_upload(self, region: str, registry_id: str, repository: str) -> Upload:
        upload_id = str(uuid.uuid4())
        upload = Upload(upload_id, region, registry_id, repository, os.path.join(self.uploads_dir, upload_id + '.part'))
        with self.lock:
            self.uploads[upload_id] = upload
        return upload

    def get_upload(self, upload_id: str) -> Optional[Upload]:
        with self.lock:
            return self.uploads.get(upload_id)

    def drop_upload(self, upload: Upload, keep_file: bool = False) -> None:
        with self.lock:
            self.uploads.pop(upload.upload_id, None)
        upload.finished = True
        if keep_file:
            upload.close()
        else:
            upload.discard()

    def close(self) -> None:
        with self.lock:
            uploads = list(self.uploads.values())
            self.uploads.clear()
        for upload in uploads:
            upload.discard()
