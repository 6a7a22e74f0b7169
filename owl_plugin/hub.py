"""Publish an export folder on the Hugging Face Hub in one commit (``owl export ... --push-to-hub``).

A Hub commit is atomic: readers see the repository before it or after it, never half of it.
``push_to_hub`` therefore uploads the whole folder as ONE commit (``HfApi.create_commit``;
large files are pre-uploaded to LFS storage first, where they stay invisible until the commit
lands). The commit mirrors the folder: remote files it does not hold (stale shards of an older
export, which transformers could pick up instead of the new index) are deleted in the same
commit; ``.gitattributes`` stays. If the commit fails and this call created the repository (or
the branch), it deletes it again unless ``resume=True``; a re-run then finds the LFS blobs
already uploaded and sends only what is missing.

Everything that can be checked locally is checked before any request: the repo id, the files
(listed before the upload; a file whose name looks like a secret, ``SECRET_PATTERNS``, refuses
the whole push), offline mode (``HF_HUB_OFFLINE=1``) and the token (``token=``, else ``HF_TOKEN``,
else the one saved by ``hf auth login``). These raise a ``HubError`` with ``local = True`` (the CLI
exits 2). A new repository is created private unless ``private=False`` (``owl push --public``).
A network failure, a rejected token or a missing write permission becomes a
``HubError`` that says what to do. The folder itself is never modified: an owl-plugin model
card is re-rendered for the target repo id in memory when the folder's card names another one.

Example:
    >>> push_to_hub("exports/smollm2-owl-70", "my-org/SmolLM2-135M-owl-70")  # private unless private=False
    PushResult(repo_id='my-org/SmolLM2-135M-owl-70', ...)
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owl_plugin.checkpoint import CONFIG_NAME
from owl_plugin.model_card import README_NAME, check_repo_id, folder_card, is_our_card

logger = logging.getLogger(__name__)

LOGIN_HINT = ("set HF_TOKEN=hf_... (a token with write access from https://huggingface.co/settings/tokens) "
              "or run `hf auth login`")
_TRUE = {"1", "true", "yes", "on"}


#: file names (any folder level, case-insensitive) that look like secrets: a push holding one is refused
SECRET_PATTERNS = (
    ".env", ".env.*", "*.env", "*credential*", "*secret*", "*password*", "*passwd*", "*.pem", "*.key", "*.p12",
    "*.pfx", "*.jks", "*.keystore", "*.kdbx", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", ".npmrc",
    ".pypirc", ".git-credentials", ".htpasswd", "token", "token.*", "*.token", "*_token", "*_token.*", "*-token",
    "*-token.*", "tokens", "tokens.*", "*.tfstate", "service_account*.json", "*.ovpn",
)


class HubError(RuntimeError):
    """Publishing on the Hub failed; the local folder is untouched.

    ``local`` is True when the failure was found before any request (the user's to fix: the CLI exits 2).
    """

    local = False


class HubAuthError(HubError):
    """No token, or the Hub rejected it."""


class HubOfflineError(HubError):
    """Offline mode is on, or the Hub cannot be reached."""


class NoTokenError(HubAuthError):
    """No token anywhere (found before any request)."""

    local = True


class OfflineModeError(HubOfflineError):
    """``HF_HUB_OFFLINE`` is on (found before any request)."""

    local = True


class SecretFileError(HubError):
    """The folder holds a file whose name looks like a secret (found before any request)."""

    local = True


def looks_like_secret(relative: str) -> str | None:
    """The ``SECRET_PATTERNS`` entry a path (relative, POSIX) matches in any of its parts, else None."""
    for part in relative.lower().split("/"):
        for pattern in SECRET_PATTERNS:
            if fnmatch.fnmatchcase(part, pattern):
                return pattern
    return None


def check_no_secrets(folder: Path, names: list[str]) -> None:
    """``SecretFileError`` naming every file of ``names`` that looks like a secret."""
    found = [f"{name} (matches {pattern!r})" for name in names if (pattern := looks_like_secret(name))]
    if found:
        raise SecretFileError(
            f"refusing to push {folder}: {len(found)} file(s) look like secrets: {', '.join(found)}; remove them "
            "from the folder (an owl export copies only known side files unless --include names one)")


@dataclass(frozen=True)
class PushResult:
    """What one push did.

    Attributes:
        repo_id: the repository.
        url: the commit's URL.
        created: whether this push created the repository.
        uploaded: files sent (paths in the repository).
        deleted: remote files removed because the folder no longer holds them.
    """

    repo_id: str
    url: str
    created: bool
    uploaded: tuple[str, ...]
    deleted: tuple[str, ...]


def check_hub_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` or a ``ValueError`` naming the value."""
    return check_repo_id(repo_id, what="--push-to-hub repo id")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now, or was when huggingface_hub was imported."""
    from huggingface_hub import constants

    now = any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return now or bool(constants.HF_HUB_OFFLINE)


def resolve_token(token: str | None = None) -> str:
    """``token``, else ``HF_TOKEN``, else the saved login; ``HubAuthError`` with the fix if none."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise NoTokenError(f"no Hugging Face token found: {LOGIN_HINT}")
    return found


def check_can_push(repo_id: str, *, token: str | None = None) -> str:
    """Every check that needs no network: repo id, offline mode, token. Returns the token.

    ``owl export --push-to-hub`` calls it before exporting, so a push that cannot work fails
    in a second instead of after the export.
    """
    check_hub_repo_id(repo_id)
    if is_offline():
        raise OfflineModeError(f"cannot push to {repo_id}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1); "
                              "unset HF_HUB_OFFLINE on a machine with internet access and push again")
    return resolve_token(token)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Transport failures of huggingface_hub's HTTP client (httpx in 1.x, requests before)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    types: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    try:
        import httpx

        types.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        import requests

        types += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return tuple(types)


def _explain(error: BaseException, repo_id: str, action: str) -> HubError:
    """A ``HubError`` telling what failed and what to do."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, _connection_errors()):
        return HubOfflineError(f"cannot reach the Hugging Face Hub to {action} {repo_id} ({type(error).__name__}: "
                               f"{error}); check the network (or HF_ENDPOINT) and push again")
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            return HubAuthError(f"the Hub rejected the token while trying to {action} {repo_id} (401: invalid or "
                                f"expired); {LOGIN_HINT}")
        if status == 403:
            return HubAuthError(f"the token may not {action} {repo_id} (403); use a token with write access to "
                                f"the namespace {repo_id.split('/')[0]!r}")
        return HubError(f"the Hub refused to {action} {repo_id} (HTTP {status}): {error}")
    return HubError(f"failed to {action} {repo_id}: {type(error).__name__}: {error}")


def _local_files(folder: Path) -> list[Path]:
    """Every file to publish: the folder's files and subfolders, hidden entries (``.cache``, staging) skipped.

    Raises:
        ValueError: a symbolic link that leads out of the folder (its target would be uploaded), naming both.
    """
    files = []
    inside = folder.resolve()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            target = path.resolve()
            if path.is_symlink() and not target.is_relative_to(inside):
                raise ValueError(f"refusing to push {folder}: {relative.as_posix()} is a link to {target}, outside "
                                 "the folder, which would be uploaded; replace it by a copy or remove it "
                                 "(nothing was uploaded)")
            files.append(path)
    return files


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = True,
    revision: str | None = None,
    resume: bool = False,
    commit_message: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> PushResult:
    """Upload an export folder to ``repo_id`` as one commit.

    Args:
        folder: an export folder (``owl export`` output: config.json, weights, README.md, ...).
        repo_id: ``ORG/NAME`` (or ``USER/NAME``).
        token: Hub token; default ``HF_TOKEN`` or the saved login.
        private: create the repository private (default; an existing repository keeps its visibility).
        revision: branch to commit to (created from main if missing); default main.
        resume: on failure, keep a repository (or branch) this call created, to push into it again.
        commit_message: default "owl-plugin export: <folder name>".
        announce: receives the lines listing what will be uploaded, before any request (default: the log).

    Returns:
        A ``PushResult``.

    Raises:
        ValueError: a bad repo id.
        FileNotFoundError: ``folder`` is not an export folder.
        HubAuthError: no token, or the Hub rejected it.
        HubOfflineError: offline mode, or the Hub cannot be reached.
        SecretFileError: a file's name looks like a secret (``SECRET_PATTERNS``).
        HubError: any other refusal by the Hub.
    """
    check_hub_repo_id(repo_id)
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} is not an export folder (no {CONFIG_NAME}); write one with "
                                "`owl export MODEL --format dense|compact --output DIR` and push that")
    files = _local_files(folder)
    names = [path.relative_to(folder).as_posix() for path in files]
    check_no_secrets(folder, names)
    token = check_can_push(repo_id, token=token)
    say = announce or logger.info
    visibility = "private" if private else "PUBLIC"
    say(f"uploading {len(files)} files of {folder} to {repo_id} (a new repository is created {visibility}):")
    for name, path in zip(names, files, strict=True):
        say(f"  {name}  ({path.stat().st_size:,} bytes)")

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    operations: list[Any] = []
    readme_text = (folder / README_NAME).read_text(errors="replace") if (folder / README_NAME).is_file() else ""
    for path in files:
        name = path.relative_to(folder).as_posix()
        content: Any = str(path)
        if name == README_NAME and is_our_card(readme_text):  # the card's load snippets name this repo
            content = folder_card(folder, repo_id=repo_id)[0].encode()
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    uploaded = tuple(op.path_in_repo for op in operations)

    api = HfApi(token=token)
    created = branch_created = False
    try:
        try:
            exists = api.repo_exists(repo_id)
            if not exists:
                api.create_repo(repo_id, private=private, exist_ok=True)
                created = True
                logger.info("created the %s repository %s", "private" if private else "public", repo_id)
            if revision and revision != "main" and not api.revision_exists(repo_id, revision):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
                branch_created = True
            remote = [] if created else api.list_repo_files(repo_id, revision=revision)
        except Exception as error:
            raise _explain(error, repo_id, "prepare") from error
        stale = sorted(set(remote) - set(uploaded) - {".gitattributes"})
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        if stale:
            logger.info("removing %d files the export no longer holds from %s: %s", len(stale), repo_id, stale[:5])
        logger.info("pushing %d files of %s to %s in one commit", len(uploaded), folder, repo_id)
        try:
            commit = api.create_commit(repo_id, operations=operations, revision=revision,
                                       commit_message=commit_message or f"owl-plugin export: {folder.name}")
        except Exception as error:
            raise _explain(error, repo_id, "commit to") from error
    except HubError:
        if not resume:
            _clean_up(api, repo_id, created=created, branch=revision if branch_created else None)
        raise
    logger.info("pushed %s: %s", repo_id, commit.commit_url)
    return PushResult(repo_id=repo_id, url=commit.commit_url, created=created, uploaded=uploaded,
                      deleted=tuple(stale))


def _clean_up(api: Any, repo_id: str, *, created: bool, branch: str | None) -> None:
    """Delete what a failed push created, if it is still empty; warn with the manual fix otherwise."""
    try:
        if created and set(api.list_repo_files(repo_id)) <= {".gitattributes"}:
            api.delete_repo(repo_id)
            logger.info("deleted %s again: the push failed and the repository was empty", repo_id)
        elif branch:
            api.delete_branch(repo_id, branch=branch)
            logger.info("deleted branch %s of %s again: the push failed", branch, repo_id)
    except Exception as error:  # the network may be what failed in the first place
        what = f"the repository https://huggingface.co/{repo_id}" if created else f"branch {branch} of {repo_id}"
        logger.warning("the push failed and %s could not be removed (%s); delete it by hand or push again "
                       "with resume", what, error)
