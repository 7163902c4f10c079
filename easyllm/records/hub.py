"""Publish a saved folder on the Hugging Face Hub (what it holds is records/folder.py's job)."""

from __future__ import annotations

from pathlib import Path


def push_folder_to_hub(
    folder: Path, repo_id: str, *, private: bool = False, token: str | None = None
) -> str:
    """Upload a saved folder to the Hugging Face Hub; returns the repository URL.

    The token is only handed to huggingface_hub, never written or printed.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, commit_message="Upload with easyllm"
    )
    return str(url)
