"""`serq data download ravdess --to DIR`: fetch a public corpus, verified and extracted.

Runs only when asked: nothing in serq downloads data on its own.
"""

from __future__ import annotations

import argparse

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("data", help="download public emotion corpora (RAVDESS)")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    dl = dsub.add_parser(
        "download",
        help="download, checksum-verify and extract a corpus",
        description="Download a corpus from its Zenodo record, verify the checksum the record publishes, "
                    "and extract it into DIR. An interrupted download resumes where it stopped when run again.",
    )
    dl.add_argument("dataset", choices=["ravdess"], help="ravdess: RAVDESS speech, Zenodo record 1188976 (~208 MB)")
    dl.add_argument("--to", required=True, metavar="DIR", help="where to extract (Actor_01/ ... Actor_24/ appear inside)")
    dl.add_argument("--base-url", metavar="URL", help="Zenodo base URL (default: SERQ_ZENODO_URL, https://zenodo.org)")
    dl.add_argument("--keep-archive", action="store_true", help="keep the zip in DIR/.serq-download after extracting")
    dl.add_argument("--retries", type=int, default=3, help="resume attempts after a dropped connection (default 3)")
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> int:
    from serq.cli.output import print_json
    from serq.progress import progress_printer
    from serq.settings import get_settings
    from serq.worker.training.download import DATASETS, download

    source = DATASETS[args.dataset]
    report = None
    if not args.json:
        print(f"{source.description}\nlicence: {source.licence}")
        mib = progress_printer("downloading (MiB)")
        report = lambda done, total: mib(-(-done // 2**20), -(-total // 2**20))  # noqa: E731 - MiB, rounded up
    result = download(args.dataset, args.to, base_url=args.base_url or get_settings().zenodo_url,
                      keep_archive=args.keep_archive, retries=max(args.retries, 0), progress=report)
    if args.json:
        print_json(result.to_dict())
    else:
        how = "downloaded" if result.downloaded else "already downloaded and extracted"
        resumed = f", resumed from {result.resumed_from} bytes" if result.resumed_from else ""
        print(f"{how}: {result.bytes} bytes, {result.checksum} verified{resumed}")
        print(f"extracted {result.extracted} new file(s) into {result.dir}")
        print(f"use it with: SERQ_RAVDESS_DIR={result.dir} serq train --local --data {result.dir}")
    return 0
