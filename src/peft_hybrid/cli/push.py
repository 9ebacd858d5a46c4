"""``peft-hybrid push DIR REPO_ID``: upload a saved adapter folder to the Hub.

    peft-hybrid push runs/samsum me/flan-t5-samsum-hybrid --private

The token comes from ``--token``, HF_TOKEN or the stored login (``hf auth login``); prefer the
latter two: a token on the command line is visible to other users of the machine. Only the
adapter, its card, images and metrics are uploaded (see `peft_hybrid.hub.upload.PUSH_PATTERNS`); a
repeated push sends only files that changed.
"""

from __future__ import annotations

import argparse

from peft_hybrid.hub.upload import DEFAULT_RETRIES, push_folder


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push",
        help="push a saved adapter folder to the Hub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", help="adapter folder written by save_pretrained or a training run")
    parser.add_argument("repo_id", help="Hub repo id, user/name (created when missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private (no effect if it exists)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--revision", default=None, help="branch to push to (created when missing); default main")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries after network/server failures")
    return parser


def run(args: argparse.Namespace) -> int:
    commit = push_folder(
        args.dir,
        args.repo_id,
        token=args.token,
        private=args.private or None,
        revision=args.revision,
        commit_message=args.commit_message,
        endpoint=args.endpoint,
        retries=args.retries,
    )
    print(commit.commit_url)
    return 0
